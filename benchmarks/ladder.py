"""The paper's ablation ladder and the baselines at equal rollout budget on the curriculum.

    python benchmarks/ladder.py [--seeds 0 1] [--steps 60] [--algos ...] [--set key=value ...] [--out ladder_table.md]

Every run starts from the embedded policy with the demo config (same B, K, steps, learning
rate, sampling), changing only `algo.name`; held-out pass@1 is measured before and after with
the same sampling (300 curriculum test questions x 2 samples, T=1). `--set` adds overrides to every
run (e.g. `algo.mini_batches=4 threads=1`), recorded in each row. An algorithm's seeds run one
after the other, so a stopped run leaves whole rows in `--runs`/results.jsonl; `--out` gets the
table (with the command and the date) to paste into docs/ladder.md.
"""
from __future__ import annotations

from oreal.training.threads import limit_openmp_spin

limit_openmp_spin()  # as the `oreal` command does, before torch loads OpenMP

import argparse
import json
import statistics
import time
from pathlib import Path

from oreal.algo.config import ALGORITHMS
from oreal.data import load_list
from oreal.recipes.demo import demo_config_path
from oreal.recipes.train import Trainer, train
from oreal.training.config import build_config
from oreal.verify import Verifier

LADDER = ["reinforce", "ladder_shaping", "ladder_bc", "ladder_token", "oreal", "oreal_no_weights", "rloo", "grpo",
          "drgrpo"]
# Rungs that are a preset plus settings over the demo's config (the demo is the `oreal` rung:
# learned log-prob credit at tau = 0.5 on the negatives). `oreal_no_weights`: every token weight 1
# (its rung without token weights); `oreal_surprise`: the same weights from the frozen policy, only
# the calibration learns (credit without learning); `oreal_both_sides`: the credit's weights on the
# positives too, as the paper does; `oreal_logprob`: that with the weights read after the RM's step
# (the best both-sided config of docs/notebook.md); `oreal_paper_rm`: the paper's token RM with
# tau = 0, the demo's config before issue 16.
VARIANTS = {
    "oreal_no_weights": ["algo.name=oreal", "algo.token_weights=none"],
    "oreal_surprise": ["algo.name=oreal", "algo.credit=surprise"],
    "oreal_both_sides": ["algo.name=oreal", "algo.token_weights_on=both"],
    "oreal_logprob": ["algo.name=oreal", "algo.token_weights_on=both", "algo.weights_after_credit_step=true"],
    "oreal_paper_rm": ["algo.name=oreal", "algo.credit=token_head", "algo.tau=0", "algo.token_weights_on=both",
                       "optim.credit_lr=1e-3", "optim.credit_min_lr=2e-4"],
}


def _mean(hist: list[dict], key: str) -> float | None:
    vals = [h[key] for h in hist if h.get(key) is not None]
    return statistics.mean(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--algos", nargs="+", default=LADDER, choices=list(dict.fromkeys([*LADDER, *VARIANTS, *ALGORITHMS])))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    ap.add_argument("--out", default="runs/ladder/table.md")
    ap.add_argument("--runs", default="runs/ladder")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {a: [] for a in args.algos}
    raw_path = Path(args.runs) / "results.jsonl"
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    befores: dict[int, float] = {}  # the same start for every algorithm of a seed
    with Verifier(workers=2) as v:
        for name in args.algos:
            for seed in args.seeds:
                algo = VARIANTS.get(name, [f"algo.name={name}"])
                cfg = build_config(demo_config_path(), [*algo, *args.set, f"seed={seed}",
                                                        f"steps={args.steps}", "max_seconds=0",
                                                        f"out={args.runs}/{name}_s{seed}", "log_every=0",
                                                        "overwrite=true"])
                t0 = time.time()
                tr = Trainer(cfg, v, log=lambda *a: None)
                test = load_list(cfg.eval_data)[: cfg.eval_limit]
                if seed not in befores:
                    befores[seed] = tr.evaluate(test, k=cfg.eval_k)["pass@1"]
                before = befores[seed]
                hist = train(cfg, v, log=lambda *a: None, trainer=tr).history
                after = tr.evaluate(test, k=cfg.eval_k)["pass@1"]
                row = {"algo": name, "seed": seed, "set": args.set, "before": before, "after": after,
                       "delta": after - before, "steps": len(hist), "seconds": time.time() - t0,
                       "kept_questions": statistics.mean(h["kept_questions"] for h in hist),
                       "selected": statistics.mean(h["selected"] for h in hist),
                       "mean_train_reward_last10": statistics.mean(h["reward"] for h in hist[-10:]),
                       # per step: optimiser steps, clipped share, and what refill cost (None: not used)
                       **{k: _mean(hist, k) for k in ("policy_steps", "clip_frac", "refill_rounds", "refill_samples",
                                                      "refill_seconds", "rollout_seconds")}}
                results[name].append(row)
                with open(raw_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{name:<16} seed {seed}: {before:.3f} -> {after:.3f} ({after - before:+.3f}) "
                      f"in {row['seconds']:.0f}s", flush=True)
    lines = [f"| algorithm | pass@1 after (mean) | change (points, mean +- sd over {len(args.seeds)} seeds) | per seed "
             "| responses in the loss per step | wall time per run |",
             "|---|---|---|---|---|---|"]
    for name in args.algos:
        rs = results[name]
        d = [100 * r["delta"] for r in rs]
        sd = statistics.stdev(d) if len(d) > 1 else 0.0
        per = ", ".join(f"{r['before']:.3f}->{r['after']:.3f}" for r in rs)
        lines.append(f"| {name} | {statistics.mean(r['after'] for r in rs):.3f} | "
                     f"{statistics.mean(d):+.1f} +- {sd:.1f} | {per} | {statistics.mean(r['selected'] for r in rs):.0f} | "
                     f"{statistics.mean(r['seconds'] for r in rs):.0f} s |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"Command: `python benchmarks/ladder.py --seeds {' '.join(map(str, args.seeds))} --steps {args.steps} "
        f"--algos {' '.join(args.algos)}{' --set ' + ' '.join(args.set) if args.set else ''}` ({time.strftime('%Y-%m-%d')}; 2 CPU cores; each run {args.steps} steps x "
        "32 questions x 8 samples from the embedded policy, the demo's config otherwise; held-out pass@1 on 300 "
        "curriculum test questions x 2 samples, T=1)\n\n" + table + "\n")


if __name__ == "__main__":
    main()
