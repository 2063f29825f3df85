"""Generated tokens per second for the embedded policy at an RL-sized batch, per engine.

    python benchmarks/rollout_throughput.py [--prompts 64] [--samples 8] [--repeat 3]

Both engines sample the same prompts with the same settings (T=1, 64 new tokens max), in
alternation, in one process; the table reports the median of the repeats.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from oreal.data import PromptConfig, load_list, render
from oreal.models import load_policy, load_tokenizer
from oreal.rollout import ENGINES, SamplingConfig, make_engine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    tok, model = load_tokenizer(args.model), load_policy(args.model)
    pc = PromptConfig(system=None, use_chat_template=False)
    prompts = [render(p.question, None, pc) for p in load_list("curriculum_test")[: args.prompts]]
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens)
    rates: dict[str, list[float]] = {n: [] for n in ENGINES}
    for r in range(args.repeat):
        for name in ENGINES:
            eng = make_engine(name, model, tok)
            t0 = time.perf_counter()
            out = eng.sample(prompts, args.samples, cfg, seed=r)
            dt = time.perf_counter() - t0
            rates[name].append(sum(len(x.response_ids) for g in out for x in g) / dt)
    print(f"{args.prompts} prompts x {args.samples} samples, torch threads {torch.get_num_threads()}")
    print(f"{'engine':<14}{'tokens/s (median)':>20}{'min':>10}{'max':>10}")
    for name, xs in rates.items():
        print(f"{name:<14}{statistics.median(xs):>20.0f}{min(xs):>10.0f}{max(xs):>10.0f}")


if __name__ == "__main__":
    main()
