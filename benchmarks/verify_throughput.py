"""Verifications per second: plain in-process Math-Verify vs oreal's pooled `Verifier`.

    python benchmarks/verify_throughput.py [--data-dir ../shared/data/benchmarks] [--repeat 4]

Two sets built from MATH-500 (read in place), each gold against itself (correct) and against
its neighbour (mostly incorrect):
- `short`: the gold boxed as the whole response (1,000 items);
- `long`: chain-of-thought responses: a thinking section (the worked solution three times) closed
  by `</think>`, then the worked solution ending in its boxed answer, about 2,300 characters
  (1,000 items; the neighbour's solution for the incorrect half).
Every pass grades every item with the verdict cache off (`cache_size=0`): the headline figure.
A last pass with the cache on repeats the set (what K samples that agree cost in training).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from oreal.verify import Verifier


def build_sets(data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    rows = [json.loads(x) for x in open(data_dir / "math500.jsonl")]
    golds = [r["answer"] for r in rows]
    nxt = rows[1:] + rows[:1]
    short = [(g, f"Reasoning... so \\boxed{{{g}}}") for g in golds]
    short += [(g, f"Reasoning... so \\boxed{{{n['answer']}}}") for g, n in zip(golds, nxt)]

    def cot(r: dict) -> str:
        think = "\n\n".join(["Let me think. " + r["solution"].replace("\\boxed", "")] * 3)
        return f"{think}\n</think>\n\n{r['solution']}\n\nThe final answer is $\\boxed{{{r['answer']}}}$."

    long = [(r["answer"], cot(r)) for r in rows] + [(r["answer"], cot(n)) for r, n in zip(rows, nxt)]
    return {"short": short, "long": long}


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/benchmarks"))
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    sets = build_sets(Path(args.data_dir))

    from math_verify import LatexExtractionConfig, parse, verify

    cfg = [LatexExtractionConfig()]
    for name, items in sets.items():
        lat = []
        t0 = time.perf_counter()
        for g, r in items:
            t = time.perf_counter()
            verify(parse("\\boxed{" + g + "}", cfg), parse(r, cfg))
            lat.append(time.perf_counter() - t)
        plain = len(items) / (time.perf_counter() - t0)
        with Verifier(workers=args.workers, cache_size=0) as v:
            v.verify_batch(items[:50])  # warm the workers
            rates = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                v.verify_batch(items)
                rates.append(len(items) / (time.perf_counter() - t0))
            single_lat = []
            for g, r in items[:: len(items) // 300][:300]:  # both halves: exact matches and worker items
                t = time.perf_counter()
                v.verify(g, r)
                single_lat.append(time.perf_counter() - t)
        with Verifier(workers=args.workers) as v:
            v.verify_batch(items)
            t0 = time.perf_counter()
            v.verify_batch(items)
            cached = len(items) / (time.perf_counter() - t0)
        chars = statistics.mean(len(r) for _, r in items)
        print(f"[{name}] {len(items)} items, mean response {chars:.0f} chars")
        print(f"  plain in-process Math-Verify: {plain:.0f}/s, p50 {pct(lat, .5):.2f} ms, p99 {pct(lat, .99):.2f} ms")
        print(f"  oreal Verifier, {args.workers} workers, verify_batch, cache off: {statistics.median(rates):.0f}/s "
              f"(median of {args.repeat}; min {min(rates):.0f}, max {max(rates):.0f})")
        print(f"  oreal Verifier, one verify() at a time, cache off: p50 {pct(single_lat, .5):.2f} ms, "
              f"p99 {pct(single_lat, .99):.2f} ms")
        print(f"  oreal Verifier, the same set again with the cache on: {cached:.0f}/s")


if __name__ == "__main__":
    main()
