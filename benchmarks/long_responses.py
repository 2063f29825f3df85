"""Responses as long as the paper's, end to end: a 2-step OREAL run through `OREALTrainer` whose
responses run to `sampling.max_new_tokens=16384`, on a tiny model with Qwen2.5's 151,936-row
output layer, then `oreal eval` at the same limit; the peak memory of each.

The model is the embedded architecture (Qwen2, 2 layers, 64 wide; head dimension 32) with
`vocab_size=151936` and 16,640 positions, random weights, and the embedded tokenizer (320 tokens:
most sampled ids decode to nothing, as ids past a real tokenizer's end would). A random model
almost never samples its stop token, so the run stops a response at the stop string "n" (11 of the
320 tokens hold an n: one comes about once in 13,800 sampled tokens): most responses end between
a few hundred and 16,384 tokens and about 30% are cut at 16,384, graded unfinished. The reward is a function: a finished response is correct when
its text has an even length, so a step can have both outcomes. Every response of a kept question
enters the loss (`algo.select=all`, not the paper's one pair), so the update trains on the 16k
rows too. The log-prob credit model, chunked log-probs (512) and packed micro-batches are on.

    python benchmarks/long_responses.py --threads 2
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from oreal import OREALConfig, OREALTrainer
from oreal.data import Problem, save_problems
from oreal.models import TinyModelConfig, build_tiny_policy, load_tokenizer, save_model

VOCAB = 151_936


def build_model(path: Path, max_new: int) -> None:
    tok = load_tokenizer("default")
    model = build_tiny_policy(tok, TinyModelConfig(hidden_size=64, layers=2, heads=2, kv_heads=1, intermediate_size=128,
                                                   max_positions=max_new + 256, output_rows=VOCAB))
    save_model(model, tok, path)


def even_length(question, response: str, gold) -> bool:
    return len(response) % 2 == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-new-tokens", type=int, default=16384)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-eval", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="oreal-long-"))
    build_model(tmp / "model", args.max_new_tokens)
    questions = [Problem(f"q{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(4)]
    save_problems(questions, tmp / "questions.jsonl")
    cfg = OREALConfig(
        out=str(tmp / "run"), policy=str(tmp / "model"), steps=args.steps, batch_questions=1, samples=args.samples,
        micro_batch=args.samples, micro_batch_tokens=args.max_new_tokens + 256, threads=args.threads,
        logprob_chunk=512, pack=True, eval_data=None, dump_per_step=args.samples, verifier_workers=1,
        algo={"name": "oreal", "actor_freeze_steps": 0, "credit": "logprob", "select": "all"},
        sampling={"max_new_tokens": args.max_new_tokens, "temperature": 1.0, "top_p": 1.0, "stop_strings": ["n"]},
        prompt={"use_chat_template": False, "system": None})
    t0 = time.time()
    result = OREALTrainer(str(tmp / "model"), questions, cfg, reward=even_length, log=lambda *a: None).train()
    seconds = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("| step | responses: tokens | unfinished | selected | trained tokens | credit loss | policy loss | rollout s "
          "| step s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in result.history:
        print(f"| {m['step']} | {m['response_tokens']:,} | {m['unfinished']} | {m['selected']} | "
              f"{m['train_tokens'] or 0:,} | "
              f"{m['credit_loss'] if m['credit_loss'] is None else round(m['credit_loss'], 4)} | "
              f"{m['loss'] if m['loss'] is None else round(m['loss'], 4)} | {m['rollout_seconds']:.0f} | "
              f"{m['seconds']:.0f} |")
    dumps = [json.loads(x) for x in (tmp / "run" / "trajectories.jsonl").read_text().splitlines()]
    print(f"\ntrain: {seconds:.0f} s, peak RSS {peak:.2f} GiB (the process: three models' weights, gradients and "
          f"AdamW state included); trajectories.jsonl {(tmp / 'run' / 'trajectories.jsonl').stat().st_size / 2**20:.2f} "
          f"MB, longest dumped response {max(d['response_tokens'] for d in dumps):,} tokens, "
          f"{sum('cut' in d for d in dumps)} of {len(dumps)} cut")
    if args.skip_eval:
        return
    t0 = time.time()
    ev = subprocess.run([sys.executable, "-m", "oreal.cli", "eval", "--model", str(tmp / "model"), "--data",
                         str(tmp / "questions.jsonl"), "--limit", "2", "--max-new-tokens", str(args.max_new_tokens),
                         "--engine", "hf_sampler", "--no-chat-template", "--out", str(tmp / "eval.json")],
                        capture_output=True, text=True)
    print(f"\noreal eval at {args.max_new_tokens:,} new tokens: exit {ev.returncode}, {time.time() - t0:.0f} s; "
          f"{(ev.stdout or ev.stderr).strip().splitlines()[-1][:200]}")


if __name__ == "__main__":
    main()
