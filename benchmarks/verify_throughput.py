"""Verifications per second: plain in-process Math-Verify vs oreal's pooled `Verifier`.

    python benchmarks/verify_throughput.py [--data-dir ../shared/data/benchmarks] [--repeat 4]
                                           [--sets short,long,auto,gsm8k]

Sets built from MATH-500 and GSM8K (read in place), each gold against itself (correct) and
against its neighbour (mostly incorrect):
- `short` (boxed mode): the gold boxed as the whole response (1,000 items);
- `long` (boxed mode): chain-of-thought responses: a thinking section (the worked solution three
  times) closed by `</think>`, then the worked solution ending in its boxed answer, about 2,300
  characters (1,000 items; the neighbour's solution for the incorrect half);
- `auto` (auto mode): MATH-500 golds as a plain-text final answer, "The answer is X." where the
  gold is a plain number (every other one written as an expression of its value, `2X/2`), and
  "The answer is $X$." where it is not; the neighbour's answer for the incorrect half (1,000 items);
- `gsm8k` (gsm8k mode): the first 500 GSM8K test golds as `#### N`, `#### 2N/2` and
  `#### N+3 - 3` (expressions, read whole), `#### Nx` (refused) and the neighbour's `#### M`
  (1,000 items).
Every pass grades every item with the verdict cache off (`cache_size=0`): the headline figure.
A last pass with the cache on repeats the set (what K samples that agree cost in training).
The plain loop parses with Math-Verify's own configs for the mode (LaTeX for boxed; LaTeX and
expressions, with sympy's parse_expr, for auto and gsm8k).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from decimal import Decimal
from pathlib import Path

from oreal.verify import Verifier

_PLAIN = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def build_sets(data_dir: Path) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    rows = [json.loads(x) for x in open(data_dir / "math500.jsonl")]
    golds = [r["answer"] for r in rows]
    nxt = rows[1:] + rows[:1]
    short = [(g, f"Reasoning... so \\boxed{{{g}}}") for g in golds]
    short += [(g, f"Reasoning... so \\boxed{{{n['answer']}}}") for g, n in zip(golds, nxt)]

    def cot(r: dict) -> str:
        think = "\n\n".join(["Let me think. " + r["solution"].replace("\\boxed", "")] * 3)
        return f"{think}\n</think>\n\n{r['solution']}\n\nThe final answer is $\\boxed{{{r['answer']}}}$."

    long = [(r["answer"], cot(r)) for r in rows] + [(r["answer"], cot(n)) for r, n in zip(rows, nxt)]

    def plain(g: str, i: int) -> str:
        if not _PLAIN.fullmatch(g):
            return f"Reasoning... The answer is ${g}$."
        if i % 2:
            return f"Reasoning... The answer is {Decimal(g) * 2}/2."  # an expression of its value
        return f"Reasoning... The answer is {g}."

    auto = [(g, plain(g, i)) for i, g in enumerate(golds)]
    auto += [(g, plain(n["answer"], i)) for i, (g, n) in enumerate(zip(golds, nxt))]

    gsm = [json.loads(x) for x in open(data_dir / "gsm8k_test.jsonl")][:500]
    nums = [r["answer"].rsplit("####", 1)[1].strip().replace(",", "") for r in gsm]
    forms = ["#### {n}", "#### {d}/2", "#### {n3} - 3", "#### {n}x"]
    gsm8k = []
    for i, n in enumerate(nums):
        v = Decimal(n)
        gsm8k.append((n, "Reasoning...\n" + forms[i % 4].format(n=n, d=2 * v, n3=v + 3)))
    gsm8k += [(n, f"Reasoning...\n#### {m}") for n, m in zip(nums, nums[1:] + nums[:1])]
    return {"short": ("boxed", short), "long": ("boxed", long), "auto": ("auto", auto), "gsm8k": ("gsm8k", gsm8k)}


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/benchmarks"))
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sets", default="short,long,auto,gsm8k")
    args = ap.parse_args()
    sets = build_sets(Path(args.data_dir))

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    for name in args.sets.split(","):
        mode, items = sets[name]
        cfg = [LatexExtractionConfig()] if mode == "boxed" else [LatexExtractionConfig(), ExprExtractionConfig()]
        lat = []
        t0 = time.perf_counter()
        for g, r in items:
            t = time.perf_counter()
            verify(parse("\\boxed{" + g + "}", [LatexExtractionConfig()]), parse(r, cfg))
            lat.append(time.perf_counter() - t)
        plain = len(items) / (time.perf_counter() - t0)
        with Verifier(workers=args.workers, cache_size=0) as v:
            v.verify_batch(items[:50], extract=mode)  # warm the workers
            rates = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                out = v.verify_batch(items, extract=mode)
                rates.append(len(items) / (time.perf_counter() - t0))
            single_lat = []
            for g, r in items[:: len(items) // 300][:300]:  # both halves: exact matches and worker items
                t = time.perf_counter()
                v.verify(g, r, extract=mode)
                single_lat.append(time.perf_counter() - t)
        with Verifier(workers=args.workers) as v:
            v.verify_batch(items, extract=mode)
            t0 = time.perf_counter()
            v.verify_batch(items, extract=mode)
            cached = len(items) / (time.perf_counter() - t0)
        chars = statistics.mean(len(r) for _, r in items)
        rate = statistics.median(rates)
        print(f"[{name}] {len(items)} items ({mode} mode), mean response {chars:.0f} chars, "
              f"{sum(o.correct for o in out)} correct")
        print(f"  plain in-process Math-Verify: {plain:.0f}/s, p50 {pct(lat, .5):.2f} ms, p99 {pct(lat, .99):.2f} ms")
        print(f"  oreal Verifier, {args.workers} workers, verify_batch, cache off: {rate:.0f}/s, "
              f"{1000 / rate:.2f} ms an item (median of {args.repeat}; min {min(rates):.0f}, max {max(rates):.0f})")
        print(f"  oreal Verifier, one verify() at a time, cache off: p50 {pct(single_lat, .5):.2f} ms, "
              f"p99 {pct(single_lat, .99):.2f} ms")
        print(f"  oreal Verifier, the same set again with the cache on: {cached:.0f}/s")


if __name__ == "__main__":
    main()
