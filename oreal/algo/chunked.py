"""Log-probs and entropy of the sampled tokens from hidden states, without a [tokens x vocab] tensor.

The output layer is applied one block at a time: `chunk` tokens by `vocab_chunk` rows of the
output embedding. The forward keeps a running log-sum-exp over the vocabulary blocks (an online
softmax: the running max, the sum of exp(z - max) and, for the entropy, of exp(z - max) * z,
rescaled when the max grows) and picks each target's logit from its block; only each token's
log-sum-exp is kept for backward, which recomputes every block's logits and builds
d log p(y) / dz = onehot(y) - softmax(z) in place. So memory grows with `chunk x vocab_chunk`,
flat in the tokens and in the vocabulary once it is past `vocab_chunk`. A model's own logit
transform (Gemma 2's soft-capping, Granite's scaling, Cohere's scale, a sampling temperature) is
applied to each block (all are elementwise), and in backward autograd differentiates the
recomputed block through it, so its gradient is exact. The entropy is a metric: computed in the
forward, no gradient.

Shapes: hidden [N, H] (rows of a packed or flattened batch), weight [V, H] (the output
embedding), bias [V] or None, targets [N] (negative ids are padding: log-prob 0 there).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

DEFAULT_CHUNK = 512
DEFAULT_VOCAB_CHUNK = 32768


def _block(hidden, weight, bias, v0: int, v1: int) -> torch.Tensor:
    """The chunk's logits over output rows [v0, v1), in float32, before any transform."""
    return torch.nn.functional.linear(hidden, weight[v0:v1], None if bias is None else bias[v0:v1]).float()


def _forward_chunk(hidden, weight, bias, targets, vocab_chunk, transform, with_entropy):
    """(log p(target), log-sum-exp, entropy or None) of one chunk of tokens, the vocabulary a block
    at a time with a running log-sum-exp."""
    n, V = hidden.shape[0], weight.shape[0]
    run_max = torch.full((n,), float("-inf"), device=hidden.device)
    run_sum = torch.zeros(n, device=hidden.device)
    run_zsum = torch.zeros(n, device=hidden.device) if with_entropy else None  # sum exp(z - max) z
    picked = torch.zeros(n, device=hidden.device)
    t = targets.clamp(min=0)
    for v0 in range(0, V, vocab_chunk):
        v1 = min(V, v0 + vocab_chunk)
        z = _block(hidden, weight, bias, v0, v1)
        if transform is not None:
            z = transform(z)
        new_max = torch.maximum(run_max, z.max(-1).values)
        rescale = torch.exp(run_max - new_max)
        e = torch.exp(z - new_max[:, None])
        run_sum = run_sum * rescale + e.sum(-1)
        if with_entropy:
            run_zsum = run_zsum * rescale + torch.linalg.vecdot(e, z)
        here = (t >= v0) & (t < v1)
        picked = torch.where(here, z.gather(-1, (t - v0).clamp(0, v1 - v0 - 1)[:, None]).squeeze(-1), picked)
        run_max = new_max
        del z, e
    lse = run_max + torch.log(run_sum)
    logp = (picked - lse) * (targets >= 0)
    entropy = lse - run_zsum / run_sum if with_entropy else None
    return logp, lse, entropy


class _ChunkedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, vocab_chunk, transform, with_entropy):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else None
        with torch.no_grad():
            for s in range(0, n, chunk):
                sl = slice(s, s + chunk)
                lp, lse[sl], ent = _forward_chunk(hidden[sl], weight, bias, targets[sl], vocab_chunk, transform,
                                                  with_entropy)
                logp[sl] = lp
                if with_entropy:
                    entropy[sl] = ent
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk, ctx.vocab_chunk, ctx.transform = chunk, vocab_chunk, transform
        if with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bias is not None
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        V, vc = weight.shape[0], ctx.vocab_chunk
        for s in range(0, hidden.shape[0], ctx.chunk):
            sl = slice(s, s + ctx.chunk)
            h, t = hidden[sl], targets[sl]
            g = grad_logp[sl].float() * (t >= 0)
            tc = t.clamp(min=0)
            gh = torch.zeros(h.shape, dtype=torch.float32, device=h.device) if need_h else None
            for v0 in range(0, V, vc):
                v1 = min(V, v0 + vc)
                with torch.no_grad():
                    raw = z = _block(h, weight, bias, v0, v1)
                if ctx.transform is not None:  # autograd differentiates the recomputed block through it
                    with torch.enable_grad():
                        raw.requires_grad_()
                        z = ctx.transform(raw)
                with torch.no_grad():  # d log p(y) / dz = onehot(y) - softmax(z), built in place
                    dz = (z.detach() if ctx.transform is not None else z).sub_(lse[sl, None]).exp_().mul_(-g[:, None])
                    here = (tc >= v0) & (tc < v1)
                    dz.scatter_add_(-1, (tc - v0).clamp(0, v1 - v0 - 1)[:, None], (g * here)[:, None])
                if ctx.transform is not None:
                    dz, = torch.autograd.grad(z, raw, dz)
                dz = dz.to(weight.dtype)
                if need_h:
                    gh += (dz @ weight[v0:v1]).float()
                if need_w:
                    grad_w[v0:v1] += (dz.T @ h).float()
                if need_b:
                    grad_b[v0:v1] += dz.float().sum(0)
            if need_h:
                grad_h[sl] = gh.to(hidden.dtype)
        return (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None, None, None, None, None, None)


def chunked_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           bias: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK,
                           logit_transform: Callable | None = None, entropy: bool = True,
                           vocab_chunk: int = DEFAULT_VOCAB_CHUNK) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-prob of each target [N] with gradient, entropy of each position's distribution [N]
    without, or None when not asked for), computed `chunk` tokens by `vocab_chunk` output rows at a
    time; `hidden` may be [..., H] with `targets` [...]."""
    if chunk < 1 or vocab_chunk < 1:
        raise ValueError("chunk and vocab_chunk must be at least 1")
    shape = targets.shape
    logp, ent = _ChunkedLogProbs.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias,
                                       targets.reshape(-1), chunk, vocab_chunk, logit_transform, entropy)
    return logp.reshape(shape), ent.reshape(shape) if ent is not None else None


def softcap(cap: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Gemma 2's final_logit_softcapping: cap * tanh(logits / cap)."""
    return lambda z: torch.tanh(z / cap) * cap


def scale(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Cohere's logit_scale (factor), Granite's 1 / logits_scaling, 1 / a sampling temperature."""
    return lambda z: z * factor
