"""Step time on CPU for 1 process vs 2 data-parallel processes (torchrun, gloo) at equal global
batch: the demo's config (32 questions x 8 samples per step) from the embedded policy.

    python benchmarks/dp_scaling.py --steps 8

One process uses 2 torch threads; each of the 2 ranks uses 1 (the machine has 2 cores).
Step 1 (verifier start-up, kernel warm-up) is left out of the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, procs: int, steps: int, extra: list[str]) -> list[dict]:
    args = ["-m", "oreal.cli", "train", str(ROOT / "oreal" / "configs" / "demo.yaml"), f"out={out}",
            f"steps={steps}", "eval_every=0", "max_seconds=0", "dump_per_step=0", "overwrite=true",
            f"threads={2 // procs}", "verifier_workers=1", *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(2 // procs))
    cmd = [sys.executable, *args] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *args]
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default="runs/bench_dp")
    args = ap.parse_args()
    rows = []
    for procs, extra in ((1, []), (2, []), (2, ["fsdp=true"])):
        ms = run(Path(args.out) / f"p{procs}{'_'.join(extra)}", procs, args.steps, extra)[1:]
        rows.append({"processes": procs, "mode": "fsdp2" if extra else ("replicated" if procs > 1 else "single"),
                     "step_s": statistics.median(m["seconds"] for m in ms),
                     "rollout_s": statistics.median(m["rollout_seconds"] for m in ms),
                     "reward": statistics.mean(m["reward"] for m in ms)})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["step_s"]
    print("| processes | mode | median step (s) | of which rollout + grading (s) | speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['mode']} | {r['step_s']:.2f} | {r['rollout_s']:.2f} | {base / r['step_s']:.2f}x |")


if __name__ == "__main__":
    main()
