"""`oreal report RUN_DIR`: PNG curves of a run and an HTML page of sampled responses, each token
coloured by the credit model's token weight the policy loss gave it (green: credited in a correct
response, red: blamed in a wrong one; the stronger the colour, the larger the weight)."""
from __future__ import annotations

import html
import json
from pathlib import Path

from .plots import credit_label, legend, read_metrics, series
from .preflight import writable_dir

PANELS = [  # (file, title, [(metric, label)])
    ("reward.png", "train reward (mean over rollouts)", [("reward", "reward")]),
    ("eval.png", "held-out pass@1", [("eval_pass@1", "eval pass@1")]),
    ("kl.png", "KL to the reference (per token)", [("kl", "KL")]),
    ("entropy.png", "policy entropy (per token)", [("entropy", "entropy")]),
    ("losses.png", "policy loss terms", [("loss_pos", "positive (BC)"), ("loss_neg", "negative (PG)"),
                                          ("loss_kl", "KL term")]),
    ("credit.png", "credit model", [("credit_loss", "BCE loss"), ("credit_acc", "sequence accuracy"),
                                  ("credit_pair_rank", "pair ranking (correct above incorrect)")]),
]


def plot_curves(metrics: list[dict], out: Path, credit: str | None = None) -> list[str]:
    """One PNG per panel that has data; `credit`: the run's `algo.credit`, named in its panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, title, keys in PANELS:
        pts = {label: series(metrics, key) for key, label in keys}
        if not any(pts.values()):
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for label, xy in pts.items():
            if xy:
                ax.plot(*zip(*xy), "o-" if len(xy) < 15 else "-", ms=3, label=label)
        ax.set_xlabel("step")
        ax.set_title(credit_label(credit) if name == "credit.png" else title, fontsize=10)
        if len(keys) > 1:
            legend(ax, fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(name)
    return written


def run_credit(run: Path) -> str | None:
    """The run's credit model as its config.yaml names it (`algo.credit`); None without a config
    or where no credit model ran (`algo.token_weights: none`, the baselines)."""
    import yaml

    try:
        algo = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("algo") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return None if algo.get("token_weights") in (None, "none") else algo.get("credit")


def _colour(weight: float | None, positive: bool) -> str:
    if weight is None or weight <= 0:
        return "transparent"
    rgb = "40,167,69" if positive else "220,53,69"
    return f"rgba({rgb},{min(1.0, weight) * 0.85:.3f})"


def render_response(row: dict) -> str:
    pos = row["reward"] > 0.5
    weights = row.get("weights") or [None] * len(row["tokens"])
    spans = []
    cut = row.get("cut")  # a long response's dump keeps tokens [0, a) and [b, n)
    for i, (tok, w) in enumerate(zip(row["tokens"], weights)):
        if cut and i == cut[0]:
            spans.append(f"<i> [... {cut[1] - cut[0]} tokens cut ...] </i>")
        tip = "" if w is None else f' title="w={w:.3f}"'
        spans.append(f'<span style="background:{_colour(w, pos)}"{tip}>{html.escape(tok)}</span>')
    verdict = "correct" if pos else "wrong"
    meta = (f"step {row['step']} &middot; {verdict} &middot; advantage {row['advantage']:+.3f} &middot; "
            f"pass rate {row['pass_rate']:.2f}" + ("" if row.get("selected") else " &middot; not selected"))
    return (f'<div class="resp {verdict}"><div class="meta">{meta}</div>'
            f'<div class="q">{html.escape(row["prompt"].strip())} <b>gold: {html.escape(str(row["gold"]))}</b></div>'
            f'<pre>{"".join(spans)}</pre></div>')


def write_report(run_dir: str | Path, out: str | Path | None = None, max_responses: int = 40) -> Path:
    run = Path(run_dir)
    if not (run / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{run}/metrics.jsonl not found: is {run} a training run directory?")
    out = Path(out) if out else run / "report"
    writable_dir(out, f"--out {out}")  # exit 2 before reading the run, as every command
    out.mkdir(parents=True, exist_ok=True)
    metrics = read_metrics(run / "metrics.jsonl")
    credit = run_credit(run)
    images = plot_curves(metrics, out, credit)
    traj = []
    if (run / "trajectories.jsonl").exists():
        traj = [json.loads(x) for x in (run / "trajectories.jsonl").read_text().splitlines() if x.strip()]
    # the latest steps first, and within them the responses the loss actually used
    traj.sort(key=lambda r: (-r["step"], not r.get("selected"), r["reward"] < 0.5))
    shown = traj[:max_responses]
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else None
    parts = [f"<h1>oreal run: {html.escape(str(run))}</h1>"]
    last = metrics[-1] if metrics else {}
    evals = [v for _, v in series(metrics, "eval_pass@1")]
    best = f"; best eval pass@1 {max(evals):.3f}" if evals else ""
    parts.append(f"<p>{len(metrics)} steps; last step reward {last.get('reward', float('nan')):.3f}{best}</p>")
    if summary:
        b, a = summary["before"]["pass@1"], summary["after"]["pass@1"]
        parts.append(f"<p>held-out pass@1: before {b:.3f}, after {a:.3f} ({a - b:+.3f})</p>")
    parts.append('<div class="grid">' + "".join(f'<img src="{i}">' for i in images) + "</div>")
    parts.append(f"<h2>Sampled responses, coloured by the token weights of the {html.escape(credit_label(credit))}</h2>"
                 '<p><span style="background:rgba(40,167,69,.6)">green</span>: tokens of a correct response, '
                 "weighted up in its behaviour-cloning term; "
                 '<span style="background:rgba(220,53,69,.6)">red</span>: tokens of a wrong response, '
                 "weighted up in its policy-gradient term. Uncoloured: weight 0 (or no credit model). "
                 "Hover a token for its weight.</p>")
    parts += [render_response(r) for r in shown] or ["<p>No trajectory dumps in this run (dump_per_step=0).</p>"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>oreal report</title><style>
body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} .grid img{{width:32%}}
.resp{{border:1px solid #ddd;margin:.6em 0;padding:.4em}} .meta{{color:#555;font-size:.85em}}
.q{{font-size:.9em;margin:.2em 0}} pre{{white-space:pre-wrap;margin:.2em 0;font-size:1em}}
.correct{{border-left:4px solid #28a745}} .wrong{{border-left:4px solid #dc3545}}
</style></head><body>{''.join(parts)}</body></html>"""
    (out / "index.html").write_text(page)
    return out
