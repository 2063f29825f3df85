"""The memory plan against a GPU: a slice of a 7B (Qwen2.5-7B's widths, a few of its layers, its
152,064-row untied embedding and output layer) through the trainer's own update under FSDP2 over
NCCL with bf16 compute over float32 masters and activation checkpointing.

    torchrun --standalone --nproc_per_node 1 benchmarks/gpu_memory_check.py [--layers 2]
    DEVICE=cpu SIZE=tiny torchrun --standalone --nproc_per_node 1 benchmarks/gpu_memory_check.py  # a dry run

Writes $OUT/gpu_memory_check.json (runs/ without OUT), each figure as soon as it is measured (the
most important first, so a run cut short still shows them):
1. `update`: one 16,384-token micro-batch (one row) through the credit-free policy update
   (policy forward and backward with the chunked log-probs, the reference's forward, AdamW's step):
   `torch.cuda.max_memory_allocated` against `oreal plan`'s peak of the update and step phases.
2. `engine_check`: the forward of the vLLM check (`trainer_logprobs`, one row per forward, no
   gradients) on 4 rows of 16k tokens: its peak over what the states hold.
3. `packed_vs_padded`: the update of 4 rows of 4,096 tokens padded against packed into one
   16,384-token sequence on SDPA (which builds a dense block-diagonal mask for packed rows): peak
   and seconds of each.
"""
from __future__ import annotations

import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oreal import algo, plan  # noqa: E402
from oreal.models import load_tokenizer  # noqa: E402
from oreal.recipes.train import Trainer  # noqa: E402
from oreal.rollout import Rollout  # noqa: E402
from oreal.rollout.vllm_engine import trainer_logprobs  # noqa: E402
from oreal.training.batch import RolloutBatch, SelectedBatch, count_tokens  # noqa: E402
from oreal.training.config import build_config  # noqa: E402
from oreal.training.logprobs import sequence_logprobs  # noqa: E402
from oreal.verify import RewardFunction  # noqa: E402

WIDTHS = {"7b": dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                     vocab_size=152064, tie_word_embeddings=False),
          "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                       vocab_size=512, tie_word_embeddings=False)}
GiB = plan.GiB


def build_slice(size: str, layers: int, out: Path) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    d = out / f"slice-{size}-{layers}"
    if not (d / "config.json").exists():
        config = Qwen2Config(num_hidden_layers=layers, max_position_embeddings=32768, rope_theta=1e6, **WIDTHS[size])
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init, fast on a GPU
            model = Qwen2ForCausalLM(config)
        model.save_pretrained(d)
        load_tokenizer("default").save_pretrained(d)
        del model
    return d


def batch_of(tr: Trainer, lengths: list[int], prompt: int = 32):
    """One selected batch of rows of `lengths` tokens (a question per 2 rows, rewards 1, 0)."""
    vocab = min(tr.tok.vocab_size, tr.policy.config.vocab_size) - 1
    groups = [[Rollout(b, k, list(range(3, 3 + prompt)), [5 + (i * 7 + k) % (vocab - 5) for i in range(n - prompt)],
                       "", True) for k, n in enumerate(lengths[2 * b:2 * b + 2])] for b in range(len(lengths) // 2)]
    rewards = torch.tensor([[1.0, 0.0]] * len(groups))
    roll = RolloutBatch([None] * len(groups), groups, rewards, 0, len(groups))
    sel = algo.select(rewards, tr.cfg.algo, torch.Generator().manual_seed(0))
    return roll, SelectedBatch.build(roll, sel.rows, sel.adv, tr.tok.pad_token_id, tr.device), len(sel.rows)


def update(tr: Trainer, lengths: list[int]) -> tuple[int, float]:
    """The policy update of rows of `lengths`: (the tokens of its largest micro-batch as the
    models see them, seconds)."""
    _, batch, n = batch_of(tr, lengths)
    counts, _ = count_tokens(batch, n, tr.cfg.sampling.max_new_tokens)
    micro = tr.micro_batches(batch)
    sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    tr.policy_update(micro, torch.ones_like(batch.mask), counts, update=True)
    sync()
    return max(mb.inputs.ids.numel() for mb in micro), time.perf_counter() - t0


def main() -> None:
    device = os.environ.get("DEVICE", "cuda")
    size = os.environ.get("SIZE", "7b")
    layers = int(os.environ.get("LAYERS", "2"))
    tokens = int(os.environ.get("TOKENS", "16384" if size == "7b" else "512"))
    out = Path(os.environ.get("OUT", "runs"))
    out.mkdir(parents=True, exist_ok=True)
    report = out / "gpu_memory_check.json"
    result: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "size": size,
                    "layers": layers, "torch": torch.__version__}

    def record(key, value):
        result[key] = value
        report.write_text(json.dumps(result, indent=1))
        print(key, json.dumps(value), flush=True)

    cuda = device == "cuda"
    policy = build_slice(size, layers, out)
    data = out / "questions.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"{i}+1", "gold": str(i + 1)}) + "\n"
                            for i in range(8)))
    overrides = [f"policy={policy}", f"device={device}", "fsdp=true", f"mixed_precision={str(cuda).lower()}",
                 "activation_checkpointing=true", "batch_questions=2", "samples=2", "micro_batch=4",
                 f"micro_batch_tokens={tokens}", f"data={data}", "eval_data=null", "algo.name=grpo",
                 "algo.kl_coef=0.01", f"sampling.max_new_tokens={tokens}", "prompt.use_chat_template=false",
                 "prompt.system=null", f"out={out / 'run'}", "engine=hf_sampler" if not cuda else "engine=hf_device"]
    trainers = {}
    for pack in ("false", "true"):  # two trainers would hold two copies: one at a time
        cfg = build_config(None, overrides + [f"pack={pack}"])
        tr = Trainer(cfg, RewardFunction(lambda q, r, g: True), log=lambda *a: None)
        update(tr, [40, 40])  # AdamW's state, on a short batch
        mem = {}
        if pack == "false":
            # 1. one 16k-token row: the update's peak against the plan's
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            n, secs = update(tr, [tokens, 40])
            p = plan.plan_run(cfg, plan.ModelShape.from_config(tr.policy.config), tr.policy.config.to_json_string(),
                              1, 0, 32, False, plan.attention_of(cfg, tr.policy.config), tokens=n)
            planned = max(p.peak(ph) for ph in ("policy update", "policy step"))
            measured = torch.cuda.max_memory_allocated() if cuda else 0
            record("update", dict(tokens=n, seconds=secs, measured_gib=measured / GiB, planned_gib=planned / GiB,
                                  error=(planned / measured - 1) if measured else None,
                                  parts={k: v / GiB for k, v in p.parts.items() if v}))
            # 2. the vLLM check's forward: 4 rows of 16k, one per forward, no gradients
            rows = [Rollout(0, k, list(range(3, 35)), [5 + (i * 3 + k) % 400 for i in range(tokens - 32)], "", True)
                    for k in range(4)]
            if cuda:
                torch.cuda.empty_cache()
                held = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            token_logprobs = partial(sequence_logprobs, chunk=cfg.logprob_chunk, entropy=False)  # as the trainer's
            trainer_logprobs(tr.policy, rows, tr.tok.pad_token_id, token_logprobs, tr.device)
            record("engine_check", dict(rows=4, tokens_per_row=tokens, seconds=time.perf_counter() - t0,
                                        peak_over_states_gib=(torch.cuda.max_memory_allocated() - held) / GiB
                                        if cuda else None))
        # 3. 4 rows of a quarter each (one micro-batch), padded against packed (SDPA)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        n, secs = update(tr, [tokens // 4] * 4)
        mem = dict(tokens=n, seconds=secs, peak_gib=torch.cuda.max_memory_allocated() / GiB if cuda else None)
        trainers[pack] = mem
        record("packed_vs_padded", dict(attn=plan.attention_of(cfg, tr.policy.config), **{
            ("packed" if k == "true" else "padded"): v for k, v in trainers.items()}))
        tr.close()
        del tr
        if cuda:
            torch.cuda.empty_cache()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
