"""Generated tokens per second per rollout engine, side by side in one process.

    python benchmarks/rollout_throughput.py [--device cpu|cuda] [--model default|DIR]
        [--prompts 64] [--samples 8] [--max-new-tokens 64] [--repeat 3] [--dtype float32]

Every engine samples the same curriculum prompts with the same settings (T=1, top-p 1), the
engines in alternation, each repeat with a new seed; the table reports the median and the ratio
to plain `model.generate()` (hf_generate, one batched call). On CUDA each timing is bracketed by synchronize().
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch

from oreal.data import PromptConfig, load_list, render
from oreal.models import load_policy, load_tokenizer
from oreal.models import resolve_model_path
from oreal.rollout import ENGINES, EngineSetup, SamplingConfig, make_engine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    installed = [n for n, spec in ENGINES.items() if spec.requires is None or importlib.util.find_spec(spec.requires)]
    ap.add_argument("--engines", default=",".join(installed),
                    help="default: every registered engine whose package is installed (vllm: README, vLLM)")
    args = ap.parse_args()
    tok, model = load_tokenizer(args.model), load_policy(args.model, args.dtype, args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    pc = PromptConfig(system=None, use_chat_template=False)
    prompts = [render(p.question, None, pc) for p in load_list("curriculum_test")[: args.prompts]]
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens)
    names = args.engines.split(",")
    setup = EngineSetup(resolve_model_path(args.model), dtype=args.dtype, log=lambda *a: None)
    engines = {n: make_engine(n, model, tok, setup) for n in names}
    for eng in engines.values():  # warm-up (and the sampler's one-off cache check)
        eng.sample(prompts[:2], 2, cfg, seed=123)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeat):
        for name, eng in engines.items():
            sync()
            t0 = time.perf_counter()
            # per-question seeds, as training samples; generate() would then run one call per
            # question, so it gets one seed for its single batched call
            seed = r if name == "hf_generate" else [r * 100_000 + i for i in range(len(prompts))]
            out = eng.sample(prompts, args.samples, cfg, seed=seed)
            sync()
            dt = time.perf_counter() - t0
            rates[name].append(sum(len(x.response_ids) for g in out for x in g) / dt)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.prompts} prompts x {args.samples} samples, {args.max_new_tokens} new tokens max, "
          f"{args.model} ({n_params / 1e6:.2f}M, {args.dtype}) on {args.device}, torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}")
    base = statistics.median(rates["hf_generate"]) if "hf_generate" in rates else None
    print(f"| engine | tokens/s (median of {args.repeat}) | min | max | x generate() |")
    print("|---|---|---|---|---|")
    for name, xs in rates.items():
        ratio = f"{statistics.median(xs) / base:.2f}" if base else "-"
        print(f"| {name} | {statistics.median(xs):.0f} | {min(xs):.0f} | {max(xs):.0f} | {ratio} |")


if __name__ == "__main__":
    main()
