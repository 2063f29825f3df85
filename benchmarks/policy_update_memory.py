"""Peak memory and seconds of one full update on one long sequence at a 151,936-token
vocabulary, as the trainer runs it (`oreal.training.logprobs.sequence_logprobs`): the log-prob
credit model's forward, BCE and backward; the policy's forward with the sampled tokens' log-probs
and entropy; the reference's forward; k3 KL plus NLL; backward. The full logits
(`logprob_chunk=0`) against the output layer 512 tokens at a time.

The models are the embedded architecture (Qwen2, 2 layers, 64 wide) with `vocab_size=151936`,
random weights; each configuration runs in a fresh process and reports the growth of its peak
RSS over the three models' weights and gradient buffers.

    python benchmarks/policy_update_memory.py --tokens 1024 4096 16384 --full-up-to 4096
    python benchmarks/policy_update_memory.py --tokens 16384 --vocab 32768 151936 --no-full
    python benchmarks/policy_update_memory.py --device cuda --size 1.5b    # on a GPU: peak allocated over
                                                                           # bf16 weights and gradients
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from functools import partial
from oreal.algo.credit import credit_sequence_loss
from oreal.algo.losses import kl_k3
from oreal.models import LogProbCredit
from oreal.training.logprobs import sequence_logprobs
T, V, chunk, threads = (int(x) for x in sys.argv[1:5])
device, size = sys.argv[5], sys.argv[6]
cuda = device == "cuda"
torch.set_num_threads(threads)
torch.manual_seed(0)
shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
if size == "1.5b":  # Qwen2.5-1.5B's shape, random weights
    shape = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2)
cfg = Qwen2Config(vocab_size=V, max_position_embeddings=T + 8, tie_word_embeddings=True, **shape)
dtype = torch.bfloat16 if cuda else torch.float32  # on a GPU: bf16 weights and activation checkpointing
policy, ref = Qwen2ForCausalLM(cfg).to(device, dtype), Qwen2ForCausalLM(cfg).to(device, dtype)
ref.load_state_dict(policy.state_dict()); ref.requires_grad_(False)
credit = LogProbCredit(Qwen2ForCausalLM(cfg).to(device, dtype), scale=10.0, offset=1.0)
credit.lm.load_state_dict(policy.state_dict())
if cuda:
    policy.gradient_checkpointing_enable(); credit.lm.gradient_checkpointing_enable(); policy.train(); credit.train()
if chunk:
    credit.use_token_logprobs(partial(sequence_logprobs, chunk=chunk, entropy=False))  # as the trainer does
for p in [*policy.parameters(), *credit.parameters()]:
    p.grad = torch.zeros_like(p)  # the gradients' own buffers count as the models'
ids = torch.randint(V, (1, T), device=device); attn = torch.ones_like(ids); mask = torch.ones(1, T - 1, device=device)
if cuda:
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
credit_loss = credit_sequence_loss(credit.scores(ids, attn, ids[:, 1:]), mask, torch.ones(1))
credit_loss.backward()
logp, entropy = sequence_logprobs(policy, ids, attn, ids[:, 1:], chunk)
with torch.no_grad():
    ref_logp, _ = sequence_logprobs(ref, ids, attn, ids[:, 1:], chunk, entropy=False)
loss = ((-logp + 0.01 * kl_k3(logp, ref_logp)) * mask).sum() / mask.sum()
loss.backward()
if cuda:
    torch.cuda.synchronize()
seconds = time.perf_counter() - t0
if cuda:
    gib = (torch.cuda.max_memory_allocated() - base) / 2**30
else:
    gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20
print(json.dumps({"gib": gib, "seconds": seconds, "loss": loss.item() + credit_loss.item(),
                  "entropy": (entropy * mask).sum().item() / mask.sum().item()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--vocab", type=int, nargs="+", default=[151936])
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full-up-to", type=int, default=4096, help="the full-logits path only up to this many tokens")
    ap.add_argument("--no-full", action="store_true", help="the chunked path only")
    ap.add_argument("--device", default="cpu", help="cpu (peak RSS) or cuda (peak allocated; bf16 weights, "
                                                    "activation checkpointing)")
    ap.add_argument("--size", default="tiny", choices=["tiny", "1.5b"], help="the models' shape: the embedded "
                                                                                "one, or Qwen2.5-1.5B's")
    args = ap.parse_args()
    print("| tokens | vocabulary | log-probs | peak over the models (GiB) | seconds | s per 1k tokens | loss |")
    print("|---|---|---|---|---|---|---|")
    for T in args.tokens:
        for V in args.vocab:
            for chunk in (0, args.chunk):
                if chunk == 0 and (T > args.full_up_to or args.no_full):
                    continue
                out = subprocess.run([sys.executable, "-c", CHILD, str(T), str(V), str(chunk), str(args.threads),
                                      args.device, args.size], capture_output=True, text=True)
                name = "full logits" if chunk == 0 else f"chunked ({chunk})"
                if out.returncode:
                    print(f"| {T:,} | {V:,} | {name} | failed: {out.stderr.strip().splitlines()[-1][:80]} | | | |",
                          flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {T:,} | {V:,} | {name} | {r['gib']:.2f} | {r['seconds']:.1f} | "
                      f"{r['seconds'] / T * 1000:.2f} | {r['loss']:.6f} |", flush=True)


if __name__ == "__main__":
    main()
