"""The model card of a trained policy: `final/policy/README.md`, YAML front matter as the Hugging
Face Hub reads it (`library_name`, `base_model`, `tags`, `datasets`) and a body with the base
model, data, algorithm and settings, steps and the evaluations, so that `huggingface-cli upload
<repo> final/policy` publishes the directory as it is.

    write_model_card(out / "final" / "policy", cfg, history)              # train(): eval_pass@1 rows
    write_model_card(..., evaluation={"before": {...}, "after": {...}})   # the demo: its before/after table
"""
from __future__ import annotations

from pathlib import Path

import yaml

CARD = "README.md"
TAGS = ["oreal", "reinforcement-learning", "math"]
_EVAL_KEYS = ("pass@1", "pass@k", "maj@k")


def _is_file(name: str) -> bool:
    return "/" in name or "\\" in name or Path(name).suffix in (".jsonl", ".json", ".csv", ".parquet")


def front_matter(cfg) -> dict:
    meta = {"library_name": "transformers", "base_model": cfg.policy, "tags": list(TAGS)}
    data = [d for d in (cfg.data,) if d and not _is_file(d)]  # a registry name; a local file is no Hub data set
    if data:
        meta["datasets"] = data
    return meta


def eval_table(history: list[dict], evaluation: dict | None = None) -> list[str]:
    """Markdown rows: the demo's before/after (`evaluation`), else the run's held-out pass@1
    (`eval_pass@1`) at its first and last evaluation."""
    if evaluation and evaluation.get("before") and evaluation.get("after"):
        b, a = evaluation["before"], evaluation["after"]
        k = b.get("k", "k")
        rows = ["| held-out ({} questions) | before | after | change |".format(b.get("n", "?")), "|---|---|---|---|"]
        for key in _EVAL_KEYS:
            if key in b and key in a:
                name = key.replace("@k", f"@{k}")
                rows.append(f"| {name} | {b[key]:.3f} | {a[key]:.3f} | {a[key] - b[key]:+.3f} |")
        return rows
    evals = [h for h in history if h.get("eval_pass@1") is not None]
    if not evals:
        return ["No held-out evaluation ran during training (`eval_every`, `eval_data`)."]
    rows = ["| step | held-out pass@1 |", "|---|---|"]
    rows += [f"| {h['step']} | {h['eval_pass@1']:.3f} |" for h in ([evals[0], evals[-1]] if len(evals) > 1 else evals)]
    return rows


def model_card(cfg, history: list[dict], evaluation: dict | None = None) -> str:
    a, o, s = cfg.algo, cfg.optim, cfg.sampling
    updates = sum(bool(h.get("actor_updated")) for h in history)
    credit = f"`{a.credit}` credit model, token weights `{a.token_weights}` at tau = {a.tau}" if a.uses_credit \
        else "no token weights"
    body = [
        f"# {Path(cfg.out).name or 'oreal'} policy",
        "",
        f"`{cfg.policy}` trained with reinforcement learning on verifiable math rewards by "
        f"[oreal](https://arxiv.org/abs/2502.06781) (algorithm `{a.name}`).",
        "",
        "## Training",
        "",
        f"- base model: `{cfg.policy}`",
        f"- data: `{cfg.data}`; held-out evaluation: `{cfg.eval_data}`",
        f"- algorithm: `{a.name}` (objective `{a.objective}`, advantage `{a.advantage}`, selection `{a.select}`, "
        f"{credit}, lambda+ {a.lambda_pos}, lambda- {a.lambda_neg}, KL {a.kl_coef} `{a.kl_kind}`)",
        f"- steps: {len(history)} of {cfg.steps} ({updates} policy updates); {cfg.batch_questions} questions x "
        f"{cfg.samples} samples a step",
        f"- optimiser: lr {o.lr} (min {o.min_lr}), warmup {o.warmup}; sampling: temperature {s.temperature}, "
        f"top-p {s.top_p}, max_new_tokens {s.max_new_tokens}",
        f"- seed {cfg.seed}, dtype `{cfg.dtype}`",
        "",
        "## Evaluation",
        "",
        *eval_table(history, evaluation),
        "",
    ]
    head = yaml.safe_dump(front_matter(cfg), sort_keys=False).strip()
    return f"---\n{head}\n---\n\n" + "\n".join(body)


def write_model_card(path: str | Path, cfg, history: list[dict], evaluation: dict | None = None) -> Path:
    """Write README.md into the policy directory `path` (rank 0 only); returns its path."""
    card = Path(path) / CARD
    card.write_text(model_card(cfg, history, evaluation))
    return card
