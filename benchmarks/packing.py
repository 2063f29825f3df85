"""Padding against packing on one question's K = 16 responses with lengths spread as in real runs
(lognormal, median 2,048 tokens, clipped to 200..16,384; a 100-token prompt).

Padded (`pack=false`): consecutive micro-batches of `--rows` rows, each padded to its longest, as
the trainer cut them before packing. Packed (`pack=true`): consecutive rows up to
`--budget` tokens, each micro-batch one sequence with positions restarting per row. Both run the
policy update's forwards and backward through the trainer's own pieces (`ModelInputs`,
`sequence_logprobs` with the output layer 512 tokens at a time, the policy's log-probs and
entropy, the reference's, k3 KL plus NLL) on the embedded architecture (Qwen2, 2 layers, 64 wide,
random weights, SDPA); the sum of the rows' losses must agree. Reports the tokens each path
computes, the share that is padding, and the seconds, side by side in one process.

    python benchmarks/packing.py --vocab 32768 --threads 2
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from oreal.algo.losses import kl_k3
from oreal.training.batch import ModelInputs, SelectedBatch, batch_tensors, micro_batches
from oreal.training.logprobs import sequence_logprobs


def response_lengths(k: int, median: int, lo: int, hi: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.lognormal(np.log(median), 1.0, k), lo, hi).round()]


def update(policy, ref, parts: list[tuple[SelectedBatch, ModelInputs]], chunk: int) -> tuple[float, float]:
    """(seconds, the sum of the rows' losses) of one policy update over these micro-batches."""
    policy.zero_grad(set_to_none=True)
    total = 0.0
    t0 = time.perf_counter()
    for b, x in parts:
        logp, _ = sequence_logprobs(policy, x.ids, x.attn, x.targets, chunk, position_ids=x.position_ids)
        with torch.no_grad():
            ref_logp, _ = sequence_logprobs(ref, x.ids, x.attn, x.targets, chunk, False, x.position_ids)
        logp, ref_logp = x.rows(logp), x.rows(ref_logp)
        loss = ((-logp + 0.01 * kl_k3(logp, ref_logp)) * b.mask).sum()
        loss.backward()
        total += loss.item()
    return time.perf_counter() - t0, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--median", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--prompt", type=int, default=100)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--rows", type=int, default=4, help="rows per padded micro-batch")
    ap.add_argument("--budget", type=int, default=0, help="tokens per packed micro-batch (0: the longest row)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    resp = response_lengths(args.k, args.median, 200, args.max_tokens, args.seed)
    seqs = [(torch.randint(3, args.vocab, (args.prompt,)).tolist(), torch.randint(3, args.vocab, (n,)).tolist())
            for n in resp]
    lengths = [args.prompt + n for n in resp]
    budget = args.budget or max(lengths)
    cfg = Qwen2Config(vocab_size=args.vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max(lengths) + 8,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    policy, ref = Qwen2ForCausalLM(cfg), Qwen2ForCausalLM(cfg)
    ref.load_state_dict(policy.state_dict())
    ref.requires_grad_(False)
    ids, attn, targets, mask = batch_tensors(seqs, pad_id=0)
    n = len(seqs)
    batch = SelectedBatch([(0, i) for i in range(n)], ids, attn, targets, mask, torch.ones(n), torch.ones(n), lengths)

    padded = [(batch[sl], ModelInputs.padded(batch[sl])) for sl in micro_batches(lengths, args.rows)]
    packed = [(batch[sl], ModelInputs.packed(batch[sl]))
              for sl in micro_batches(lengths, args.k, budget, packed=True)]
    real = sum(lengths)
    padded_tokens = sum(x.ids.numel() for _, x in padded)
    packed_tokens = sum(x.ids.numel() for _, x in packed)
    print(f"response lengths: {sorted(resp)} (median {int(np.median(resp))}, {real:,} tokens with the prompts)")
    results = {}
    for name, parts in (("packed", packed), ("padded", padded)):
        results[name] = update(policy, ref, parts, 512)
    gap = abs(results["packed"][1] - results["padded"][1]) / abs(results["padded"][1])
    print(f"\nthe rows' losses: padded {results['padded'][1]:.4f}, packed {results['packed'][1]:.4f} "
          f"(relative gap {gap:.1e})\n")
    print("| path | micro-batches | tokens computed | of which padding | seconds |")
    print("|---|---|---|---|---|")
    for name, parts, tokens in (("padded", padded, padded_tokens), ("packed", packed, packed_tokens)):
        print(f"| {name} | {len(parts)} | {tokens:,} | {(tokens - real) / tokens:.1%} | {results[name][0]:.1f} |")
    print(f"\npacked / padded seconds: {results['packed'][0] / results['padded'][0]:.2f}")


if __name__ == "__main__":
    main()
