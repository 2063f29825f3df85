"""`oreal demo`: the embedded tiny policy, improved by OREAL on the built-in curriculum.

Evaluates held-out pass@1 before and after with the same sampling settings, prints a table,
and writes summary.json, metrics.jsonl and learning_curve.png into the run directory. The run is
a fixed number of steps with a fixed thread count, so a seed gives the same numbers, bit for bit,
on a rerun on the same machine; another CPU model rounds differently and can land a few points
away (README, "The two commands"). `max_seconds` is only a safety cap, and the table says so
loudly when it fires.
"""
from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from ..data import load_list
from ..verify import Verifier
from ..training.config import build_config
from ..training.model_card import write_model_card
from ..training.rundir import check_run_dir
from .train import Trainer, train


def demo_config_path() -> str:
    return str(resources.files("oreal") / "configs" / "demo.yaml")


def run_demo(out: str, steps: int | None = None, seed: int = 0, overrides: list[str] | None = None,
             log=print) -> dict:
    ov = [f"out={out}", f"seed={seed}"] + ([f"steps={steps}"] if steps else []) + list(overrides or [])
    cfg = build_config(demo_config_path(), ov)
    check_run_dir(cfg)  # a run directory that cannot be used fails now, not after the first evaluation
    t0 = time.time()
    with Verifier(workers=cfg.verifier_workers, timeout=cfg.verifier_timeout) as v:
        trainer = Trainer(cfg, v, log)
        test = load_list(cfg.eval_data)[: cfg.eval_limit]
        log(f"demo: embedded policy, {len(test)} held-out questions x {cfg.eval_k} samples, "
            f"T={cfg.sampling.temperature}, top-p={cfg.sampling.top_p}")
        before = trainer.evaluate(test, k=cfg.eval_k)
        log(f"before: pass@1 {before['pass@1']:.3f}")
        t_train = time.time()
        result = train(cfg, v, log=log, trainer=trainer)
        history, train_seconds = result.history, time.time() - t_train
        if result.interrupted:
            trainer.close()
            return {"interrupted": result.interrupted, "steps": len(history)}
        after = trainer.evaluate(test, k=cfg.eval_k, keep_samples=8)
        trainer.close()
    seconds = time.time() - t0
    summary = {
        "before": {k: before[k] for k in ("pass@1", "pass@k", "maj@k", "n", "k", "unfinished", "no_answer")},
        "after": {k: after[k] for k in ("pass@1", "pass@k", "maj@k", "n", "k", "unfinished", "no_answer")},
        "before_by_group": {g: r["pass@1"] for g, r in before["by_group"].items()},
        "after_by_group": {g: r["pass@1"] for g, r in after["by_group"].items()},
        "steps": len(history), "steps_planned": cfg.steps, "seconds": seconds, "train_seconds": train_seconds,
        # the safety cap (max_seconds) fired: fewer steps than planned, numbers not comparable
        "time_capped": len(history) < cfg.steps, "max_seconds": cfg.max_seconds,
        "seed": seed, "algo": cfg.algo.name, "threads": history[-1]["threads"] if history else cfg.threads,
        "samples_after": after.get("samples", []),
        "policy_updates": sum(bool(h.get("actor_updated")) for h in history),
    }
    out_dir = Path(cfg.out)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_model_card(out_dir / "final" / "policy", cfg, history, summary)  # the card with this before/after table
    from ..plots import learning_curve

    learning_curve(history, out_dir / "learning_curve.png", before["pass@1"], after["pass@1"],
                   f"{cfg.algo.name} on the built-in curriculum", cfg.algo.credit if cfg.algo.uses_credit else None)
    from ..report import write_report

    report = write_report(out_dir)
    log(format_table(summary))
    say_why_nothing_changed(summary, len(history), cfg.algo.actor_freeze_steps, log)
    log(f"wrote {out_dir}/summary.json, metrics.jsonl, learning_curve.png, {report}/index.html")
    return summary


def say_why_nothing_changed(summary: dict, steps: int, freeze: int, log=print) -> None:
    """A table that says +0.000 because the policy never trained gets its reason beside it."""
    if not summary["policy_updates"]:
        log(f"the policy was not updated: {steps} step(s), and the first {freeze} train only the credit model "
            f"(algo.actor_freeze_steps); run more steps than that")


def format_table(s: dict) -> str:
    rows = [("pass@1", "pass@1"), (f"pass@{s['before']['k']}", "pass@k"), (f"maj@{s['before']['k']}", "maj@k")]
    lines = ["", f"{'held-out (' + str(s['before']['n']) + ' q)':<22}{'before':>8}{'after':>8}{'change':>9}"]
    for label, key in rows:
        b, a = s["before"][key], s["after"][key]
        lines.append(f"{label:<22}{b:>8.3f}{a:>8.3f}{a - b:>+9.3f}")
    for g in sorted(s["before_by_group"]):
        if g.startswith("subject="):
            b, a = s["before_by_group"][g], s["after_by_group"].get(g, float("nan"))
            lines.append(f"  {g[8:]:<20}{b:>8.3f}{a:>8.3f}{a - b:>+9.3f}")
    lines.append(f"{s['steps']} OREAL steps in {s.get('train_seconds', s['seconds']):.0f}s, {s['seconds']:.0f}s in all "
                 f"with both evaluations")
    lines.append(f"seed {s['seed']}, {s.get('threads', '?')} threads: a rerun here gives these numbers bit for bit; "
                 f"another CPU model can land a few points away (README: the spread over seeds)")
    if s.get("time_capped"):
        lines += ["", f"!! STOPPED EARLY: the safety time cap max_seconds={s['max_seconds']:.0f} fired after "
                      f"{s['steps']} of {s['steps_planned']} steps. These are not the demo's numbers (a seed gives "
                      f"its numbers only when all steps run); rerun on a less busy "
                      f"machine or with max_seconds=0."]
    return "\n".join(lines)
