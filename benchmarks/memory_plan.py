"""The memory plan (`oreal plan`) against the peak resident memory of real updates on CPU.

    python benchmarks/memory_plan.py [--shapes embedded mid qwen05b_2l qwen05b] [--tokens 1024 4096 16384]
                                     [--out runs/memory_plan.jsonl]
    python benchmarks/memory_plan.py --replan runs/memory_plan.jsonl   # today's plan, the peaks measured then

Each row is a fresh process: a `Trainer` (policy, reference and, in the `credit` rows, the
log-prob credit model) on a Qwen2-architecture policy of the row's widths, then one micro-batch of
8 responses of ragged lengths (one pair of questions, rewards 1, 0, 1, 0, ...) totalling about the
row's tokens, through the trainer's own credit and policy updates, padded or packed, with or
without activation checkpointing. A first update on one short row creates AdamW's state; the
peak resident size (VmHWM) is then reset (`/proc/self/clear_refs`) and the second update's peak
read. Every process (these and the plan's probes) runs with glibc's mmap threshold fixed at
64 KiB (`oreal.plan.LIVE_RSS`), so its resident size follows its live tensors. The plan is `oreal.plan.plan_run` at the same micro-batch, its credit- and policy-update
peaks, plus the process's resident size after its imports and before any model (the Python and
library runtime, measured in the same process, not fitted). Shapes: `embedded` (the shipped
0.83M policy), `mid` (hidden 512, 4 layers, 32k vocabulary), `qwen05b` (Qwen2.5-0.5B's shape:
hidden 896, intermediate 4,864, 14 heads, 2 KV heads, 151,936-row tied output layer, 24 layers,
494M parameters), `qwen05b_2l` (the same widths, 2 layers). A row the plan puts past
`--max-gib` (this machine's memory) is printed as skipped, with the plan's figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = {
    "embedded": None,
    "mid": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False),
    "qwen05b_2l": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=2, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen05b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}
UPDATE_PHASES = ("credit update", "credit backward's end", "credit step", "policy update", "policy backward's end",
                 "policy step")
WEIGHTS = [1.0, 0.6, 1.4, 0.8, 1.2, 0.5, 0.9, 1.6]  # the rows' relative lengths (repeated for more rows)
PROMPT = 32
LONGEST_ROW = {"embedded": 240}  # the embedded policy's window is 256 positions: more, shorter rows

CHILD = r"""
import json, os, sys, torch
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
args = json.loads(sys.argv[1])
from oreal.recipes.train import Trainer
from oreal.training.config import build_config
from oreal.training.batch import RolloutBatch, SelectedBatch, count_tokens
from oreal.training.credit import no_credit
from oreal.rollout import Rollout
from oreal import algo, plan
from oreal.verify import RewardFunction
base = rss("VmRSS:")
cfg = build_config(None, args["overrides"])
tr = Trainer(cfg, RewardFunction(lambda q, r, g: True), log=lambda *a: None)
def update(lengths):
    groups = []
    for b in range(len(lengths) // 4):
        groups.append([Rollout(b, k, list(range(3, 3 + args["prompt"])),
                               [5 + (i % 200) for i in range(lengths[4 * b + k] - args["prompt"])], "", True)
                       for k in range(4)])
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0]] * len(groups))
    roll = RolloutBatch([None] * len(groups), groups, rewards, 0, len(groups))
    sel = algo.select(rewards, cfg.algo, torch.Generator().manual_seed(0))
    batch = SelectedBatch.build(roll, sel.rows, sel.adv, tr.tok.pad_token_id, tr.device)
    counts, _ = count_tokens(batch, len(sel.rows), cfg.sampling.max_new_tokens)
    micro = tr.micro_batches(batch)
    assert len(micro) == 1
    weights, _, _ = tr.credit.token_credit(batch, micro, counts) if tr.credit else no_credit(batch)
    tr.policy_update(micro, weights, counts, update=True)
    return micro[0].inputs.ids.numel()
update([args["prompt"] + 4] * 4)  # AdamW's state, on a short batch
import gc; gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # the peak resident size starts again here
before = rss("VmRSS:")
tokens = update(args["lengths"])
print("RESULT " + json.dumps({"base": base, "before": before, "peak": rss("VmHWM:"), "tokens": tokens,
                              "packed": tr.pack}))
"""


def make_policy(shape: str, root: Path) -> str:
    if SHAPES[shape] is None:
        return "default"
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from oreal.models import load_tokenizer

    d = root / shape
    if not (d / "config.json").exists():
        config = Qwen2Config(max_position_embeddings=32768, rope_theta=1e6, **SHAPES[shape])
        Qwen2ForCausalLM(config).save_pretrained(d)
        load_tokenizer("default").save_pretrained(d)
    return str(d)


def row_lengths(shape: str, tokens: int) -> list[int]:
    """Ragged lengths (WEIGHTS repeated) summing to about `tokens`, 8 rows or as many as keep the
    longest within the shape's window."""
    longest = LONGEST_ROW.get(shape, 1 << 30)
    n = 8
    while tokens * max(WEIGHTS) / (sum(WEIGHTS) * n / 8) > longest:
        n += 8
    w = (WEIGHTS * (n // 8))
    return [max(PROMPT + 4, round(tokens * x / sum(w))) for x in w]


def row(shape: str, policy: str, requested: int, packed: bool, ckpt: bool, credit: bool, data: str,
        max_gib: float, measure: bool = True) -> dict:
    """One row: the plan, then (`measure`) the measurement in a fresh process."""
    import torch
    from transformers import AutoConfig

    from oreal import plan
    from oreal.models import resolve_model_path
    from oreal.training.config import build_config

    lengths = row_lengths(shape, requested)
    overrides = [f"policy={policy}", "threads=2", f"batch_questions={len(lengths) // 4}", "samples=4",
                 f"micro_batch={len(lengths)}", f"data={data}",
                 f"sampling.max_new_tokens={max(lengths) - PROMPT}", f"pack={str(packed).lower()}",
                 f"activation_checkpointing={str(ckpt).lower()}", "algo.name=grpo", "algo.kl_coef=0.01",
                 "prompt.use_chat_template=false", "prompt.system=null", "out=/tmp/oreal-memory-plan"]
    if credit:
        overrides += ["algo.token_weights=threshold", "algo.credit=logprob", "algo.objective=bc",
                      "algo.loss_norm=side_token_mean"]
    path = resolve_model_path(policy)
    config = AutoConfig.from_pretrained(path)
    config_json = json.dumps(json.loads(Path(path, "config.json").read_text()))
    cfg = build_config(None, overrides)
    attn = plan.attention_of(cfg, config)
    tokens = sum(lengths) if packed else len(lengths) * max(lengths)  # what the micro-batch's ids will hold
    p = plan.plan_run(cfg, plan.ModelShape.from_config(config), config_json, 1, 0, PROMPT, packed, attn,
                      tokens=tokens)
    planned = max(p.peak(ph) for ph in UPDATE_PHASES)
    base = dict(shape=shape, requested=requested, tokens=tokens, packed=packed, checkpointing=ckpt, credit=credit, torch=torch.__version__)
    if planned / plan.GiB > max_gib or not measure:  # past this machine's memory: the plan's figure only
        return dict(base, measured_gib=None, planned_gib=planned / plan.GiB, error=None)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(dict(overrides=overrides, lengths=lengths,
                                                                       prompt=PROMPT))],
                         capture_output=True, text=True, timeout=3600, env={**os.environ, **plan.LIVE_RSS})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    got = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert (got["tokens"], got["packed"]) == (tokens, packed), (got, tokens, packed)
    planned += got["base"]
    return dict(base, measured_gib=got["peak"] / plan.GiB, planned_gib=planned / plan.GiB,
                runtime_gib=got["base"] / plan.GiB, before_gib=got["before"] / plan.GiB,
                resident_planned_gib=(p.peak("load") + got["base"]) / plan.GiB, error=planned / got["peak"] - 1)


def replan(path: str) -> None:
    """The table of an earlier run's measured peaks against the plan of the code as it is now."""
    root = Path(tempfile.mkdtemp(prefix="oreal-plan-models-"))
    data = root / "questions.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"{i}+1", "gold": str(i + 1)}) + "\n" for i in range(8)))
    print("| shape | tokens | packed | checkpointing | credit | measured peak GiB | planned GiB | error |")
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for old in map(json.loads, Path(path).read_text().splitlines()):
        if old.get("measured_gib") is None:
            continue
        shape, policy = old["shape"], make_policy(old["shape"], root)
        for requested in ([old["requested"]] if "requested" in old else [1024, 4096, 16384]):
            r = row(shape, policy, requested, old["packed"], old["checkpointing"], old["credit"], str(data), 1e9,
                    measure=False)
            if r["tokens"] == old["tokens"]:
                break
        else:
            raise RuntimeError(f"no requested size gives {old['tokens']} tokens for {shape}")
        planned = r["planned_gib"] + old["runtime_gib"]
        error = planned / old["measured_gib"] - 1
        worst = max(worst, abs(error))
        print(f"| {shape} | {old['tokens']} | {old['packed']} | {old['checkpointing']} | {old['credit']} | "
              f"{old['measured_gib']:.3f} | {planned:.3f} | {100 * error:+.1f}% |", flush=True)
    print(f"\nlargest error: {100 * worst:.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", nargs="+", type=int, default=[1024, 4096, 16384])
    ap.add_argument("--credit", action="store_true", help="also the rows with the log-prob credit model")
    ap.add_argument("--out", default="runs/memory_plan.jsonl")
    ap.add_argument("--max-gib", type=float, default=20.0, help="skip a row the plan puts past this (the machine's "
                                                                 "memory, less the runtime)")
    ap.add_argument("--packed", nargs="+", default=["false", "true"], choices=["false", "true"])
    ap.add_argument("--checkpointing", nargs="+", default=["false", "true"], choices=["false", "true"])
    ap.add_argument("--replan", metavar="JSONL", help="no measurement: the plan of the current code against the "
                                                       "peaks measured in an earlier run's rows")
    args = ap.parse_args()
    if args.replan:
        return replan(args.replan)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="oreal-plan-models-"))
    data = root / "questions.jsonl"  # short prompts: the rows' lengths are the benchmark's, not the data's
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"{i}+1", "gold": str(i + 1)}) + "\n" for i in range(8)))
    print("| shape | tokens | packed | checkpointing | credit | measured peak GiB | planned GiB | error |")
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for shape in args.shapes:
        policy = make_policy(shape, root)
        for tokens in args.tokens:
            for packed in (x == "true" for x in args.packed):
                for ckpt in (x == "true" for x in args.checkpointing):
                    for credit in ((False, True) if args.credit else (False,)):
                        r = row(shape, policy, tokens, packed, ckpt, credit, str(data), args.max_gib)
                        with open(args.out, "a") as f:
                            f.write(json.dumps(r) + "\n")
                        if r["error"] is None:
                            print(f"| {shape} | {r['tokens']} | {packed} | {ckpt} | {credit} | skipped: planned "
                                  f"{r['planned_gib']:.1f} GiB | | |", flush=True)
                            continue
                        worst = max(worst, abs(r["error"]))
                        print(f"| {shape} | {r['tokens']} | {packed} | {ckpt} | {credit} | {r['measured_gib']:.3f} "
                              f"| {r['planned_gib']:.3f} | {100 * r['error']:+.1f}% |", flush=True)
    print(f"\nlargest error: {100 * worst:.1f}%")


if __name__ == "__main__":
    main()
