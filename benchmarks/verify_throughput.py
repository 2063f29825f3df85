"""Verifications per second on MATH-500 answers: plain in-process Math-Verify vs oreal's pool.

    python benchmarks/verify_throughput.py [--data-dir ../shared/data/benchmarks] [--repeat 4]

Responses are each gold boxed (correct) and a neighbour's gold boxed (mostly incorrect), so
half the items need a full comparison. Both sides grade the same items in one run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from oreal.verify import Verifier


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/benchmarks"))
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    golds = [json.loads(x)["answer"] for x in open(Path(args.data_dir) / "math500.jsonl")]
    items = [(g, f"Reasoning... so \\boxed{{{g}}}") for g in golds]
    items += [(g, f"Reasoning... so \\boxed{{{s}}}") for g, s in zip(golds, golds[1:] + golds[:1])]

    from math_verify import LatexExtractionConfig, parse, verify

    cfg = [LatexExtractionConfig()]
    lat = []
    t0 = time.perf_counter()
    for g, r in items:
        t = time.perf_counter()
        verify(parse("\\boxed{" + g + "}", cfg), parse(r, cfg))
        lat.append(time.perf_counter() - t)
    plain = len(items) / (time.perf_counter() - t0)

    with Verifier(workers=args.workers) as v:
        v.verify_batch(items[:50])  # warm the workers
        rates, single_lat = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            v.verify_batch(items)
            rates.append(len(items) / (time.perf_counter() - t0))
        for g, r in items[:300]:
            t = time.perf_counter()
            v.verify(g, r)
            single_lat.append(time.perf_counter() - t)

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000

    print(f"items per pass: {len(items)}")
    print(f"plain in-process Math-Verify (gold parsed every time): {plain:.0f}/s, "
          f"p50 {pct(lat, .5):.2f} ms, p99 {pct(lat, .99):.2f} ms")
    print(f"oreal pool, {args.workers} workers, batch: {statistics.median(rates):.0f}/s "
          f"(median of {args.repeat}; min {min(rates):.0f}, max {max(rates):.0f})")
    print(f"oreal pool, one call at a time: p50 {pct(single_lat, .5):.2f} ms, "
          f"p99 {pct(single_lat, .99):.2f} ms")


if __name__ == "__main__":
    main()
