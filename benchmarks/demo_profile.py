"""Where one demo step's time goes: the demo's trainer, a few warm-up steps, then per-phase times
of the next steps, the held-out evaluation, and a cProfile of one step.

    python benchmarks/demo_profile.py [--warmup 3] [--steps 5] [--top 15] [key=value ...]

Phases are the step's own metrics (sample, grade, credit forward/backward + its optimiser step,
policy forward/backward, policy optimiser step); `other` is the rest of the step (batching, selection,
metrics). Sampling per token is sample_seconds over the decode steps the longest row needed
(max_new_tokens when any row runs to the cap). Run it with PYTHONPATH pointing at another
checkout to profile that code on the same machine in the same hour.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time

import torch

import oreal
from oreal.data import load_list
from oreal.recipes.demo import demo_config_path
from oreal.recipes.train import Trainer
from oreal.training.config import build_config
from oreal.verify import Verifier

PHASES = ("sample_seconds", "grade_seconds", "credit_seconds", "policy_seconds", "optim_seconds")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--sort", default="tottime", help="cProfile order: tottime | cumulative")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = build_config(demo_config_path(), ["out=/tmp/oreal-demo-profile", "eval_every=0", *args.overrides])
    with Verifier(workers=cfg.verifier_workers, timeout=cfg.verifier_timeout) as v:
        trainer = Trainer(cfg, v, lambda *a, **k: None)
        test = load_list(cfg.eval_data)[: cfg.eval_limit]
        t0 = time.perf_counter()
        trainer.evaluate(test, k=cfg.eval_k)
        eval_s = time.perf_counter() - t0
        for _ in range(args.warmup):
            trainer.step()
        rows = [trainer.step().metrics for _ in range(args.steps)]
        prof = cProfile.Profile()
        prof.enable()
        rows.append(trainer.step().metrics)
        prof.disable()
        trainer.close()
    for r in rows:  # per step: a difference of medians is not the median of the differences
        r["other_seconds"] = r["seconds"] - sum(r[k] or 0.0 for k in PHASES)
    med = {k: statistics.median(r[k] or 0.0 for r in rows)
           for k in (*PHASES, "other_seconds", "seconds", "response_tokens")}
    print(f"oreal at {oreal.__file__}; torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"engine {cfg.engine}; median of {len(rows)} steps after {args.warmup} warm-up")
    print(f"| phase | seconds | share |\n|---|---|---|")
    for k in (*PHASES, "other_seconds"):
        print(f"| {k[:-8]} | {med[k]:.3f} | {med[k] / med['seconds']:.0%} |")
    print(f"| step | {med['seconds']:.3f} | 100% |")
    print(f"sampled tokens per step {med['response_tokens']:.0f}; sampling "
          f"{1e3 * med['sample_seconds'] / cfg.sampling.max_new_tokens:.1f} ms per decode step "
          f"(of at most {cfg.sampling.max_new_tokens}); {med['response_tokens'] / med['sample_seconds']:.0f} tokens/s")
    print(f"held-out evaluation ({len(test)} q x {cfg.eval_k}): {eval_s:.1f} s")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats(args.sort).print_stats(args.top)
    print("\ncProfile of one step, by own time:\n" + "\n".join(s.getvalue().splitlines()[6:]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**med, "eval_seconds": eval_s, "oreal": oreal.__file__}, f, indent=2)


if __name__ == "__main__":
    main()
