"""Rollouts ahead on this machine: the demo at max_staleness S = 0, 1, 2, side by side, on each seed.

    python benchmarks/ahead.py [--seeds 0 1 2] [--staleness 0 1 2] [--steps 300] [--runs runs/ahead]

Each run is `oreal demo --seed SEED max_staleness=S` in its own process, one at a time, on the same
2 cores: at S = 0 the trainer samples and trains in turn with both cores (threads=2, the demo's); at
S > 0 the trainer trains with one core while the rollout worker samples with the other (threads=1,
rollout_threads=1). A row records the wall time of the training loop, held-out pass@1 before and
after (300 test questions x 2, sampled by the trainer's own engine), the staleness each step trained
at, the trainer's idle share (its wait for batches over the loop's time) and the sampler's (one minus
the worker's sampling time over the loop's time), and the phase times the GPU model in
docs/scaling.md reads: the mean step's sampling and training seconds. Rows go to --runs/results.jsonl
as each run ends; the table is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def row(run: Path, s: int, seed: int, wall: float) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    m = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    loop = summary["train_seconds"]
    train = sum((r["credit_seconds"] or 0) + (r["policy_seconds"] or 0) + (r["optim_seconds"] or 0) for r in m)
    sample = sum(r["sample_seconds"] or 0 for r in m)
    wait = sum(r["wait_seconds"] or 0 for r in m) if s else sample  # S = 0: the trainer samples itself
    return {
        "staleness": s, "seed": seed, "steps": len(m), "wall_seconds": wall, "train_loop_seconds": loop,
        "pass1_before": summary["before"]["pass@1"], "pass1_after": summary["after"]["pass@1"],
        "change": summary["after"]["pass@1"] - summary["before"]["pass@1"],
        "staleness_counts": {str(k): sum(1 for r in m if (r["staleness"] or 0) == k) for k in range(s + 1)},
        "trainer_idle": wait / loop,
        "sampler_idle": 1 - sample / loop,
        "sample_seconds_per_step": sample / len(m), "train_seconds_per_step": train / len(m),
        "grade_seconds_per_step": sum(r["grade_seconds"] or 0 for r in m) / len(m),
        "threads": summary["threads"], "time_capped": summary["time_capped"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="the demo's when unset (300)")
    ap.add_argument("--runs", default="runs/ahead")
    args = ap.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:  # a seed's S side by side, so a stopped benchmark leaves whole comparisons
        for s in args.staleness:
            out = runs / f"S{s}-seed{seed}"
            threads = ["threads=2"] if s == 0 else ["threads=1", "rollout_threads=1"]
            cmd = [sys.executable, "-m", "oreal.cli", "demo", "--seed", str(seed), "--out", str(out), "--overwrite",
                   *(["--steps", str(args.steps)] if args.steps else []), f"max_staleness={s}", "max_seconds=0",
                   *threads]
            t0 = time.time()
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
            rows.append(row(out, s, seed, time.time() - t0))
            with open(runs / "results.jsonl", "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))


def table(rows: list[dict]) -> str:
    lines = ["| S | seeds | training loop, s | pass@1 change, points | trainer idle | sampler idle | "
             "sampling s/step | training s/step |", "|---|---|---|---|---|---|---|---|"]
    for s in sorted({r["staleness"] for r in rows}):
        rs = [r for r in rows if r["staleness"] == s]

        def ms(key, scale=1.0, fmt="{:.1f}"):
            xs = [r[key] * scale for r in rs]
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            return f"{fmt.format(statistics.mean(xs))} +- {fmt.format(sd)}"
        lines.append(f"| {s} | {len(rs)} | {ms('train_loop_seconds', fmt='{:.0f}')} | {ms('change', 100)} | "
                     f"{ms('trainer_idle', 100, '{:.0f}')}% | {ms('sampler_idle', 100, '{:.0f}')}% | "
                     f"{ms('sample_seconds_per_step', fmt='{:.2f}')} | {ms('train_seconds_per_step', fmt='{:.2f}')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
