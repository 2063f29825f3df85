"""Peak memory and seconds of the sampled tokens' log-probs + entropy + backward through the output
layer, at a 151,936-token vocabulary: the full [tokens x vocab] logits (the trainer's path today)
against `oreal.algo.chunked` (a chunk of tokens at a time, recomputed in backward).

Each configuration runs in a fresh process; memory is the growth of its peak RSS over the
inputs (hidden states, head, their gradients' buffers), read with getrusage.

    python benchmarks/logprob_memory.py --tokens 1024 4096 16384 --full-up-to 4096
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[5]))
from oreal.algo.chunked import chunked_token_logprobs
path, T, V, H = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
g = torch.Generator().manual_seed(0)
hidden = torch.randn(T, H, generator=g, requires_grad=True)
weight = (0.02 * torch.randn(V, H, generator=g)).requires_grad_()
targets = torch.randint(V, (T,), generator=g)
weight.grad = torch.zeros_like(weight); hidden.grad = torch.zeros_like(hidden)  # the gradients' own buffers
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if path == "full":
    logits = torch.nn.functional.linear(hidden, weight).float()
    lsm = torch.log_softmax(logits, -1)
    logp = lsm.gather(-1, targets[:, None]).squeeze(-1)
    with torch.no_grad():
        entropy = -(lsm.exp() * lsm).sum(-1)
else:
    logp, entropy = chunked_token_logprobs(hidden, weight, targets, chunk=int(sys.argv[6]))
logp.sum().backward()
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"path": path, "tokens": T, "vocab": V, "gib": (peak - base) / 2**20, "seconds": seconds,
                  "logp_sum": float(logp.sum())}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full-up-to", type=int, default=4096, help="the full path only up to this many tokens")
    args = ap.parse_args()
    print("| tokens | path | peak over inputs (GiB) | seconds | sum of log-probs |")
    print("|---|---|---|---|---|")
    for T in args.tokens:
        for path in ("full", "chunked"):
            if path == "full" and T > args.full_up_to:
                continue
            out = subprocess.run([sys.executable, "-c", CHILD, path, str(T), str(args.vocab), str(args.hidden),
                                  str(args.threads), str(args.chunk)], capture_output=True, text=True)
            if out.returncode:
                print(f"| {T} | {path} | failed: {out.stderr.strip().splitlines()[-1][:80]} | | |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {T:,} | {path} | {r['gib']:.2f} | {r['seconds']:.1f} | {r['logp_sum']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
