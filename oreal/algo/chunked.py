"""Log-probs and entropy of the sampled tokens from hidden states, without a [tokens x vocab] tensor.

The output layer is applied one chunk of tokens at a time: each chunk's logits live only while
that chunk is processed, in the forward and again in the backward (recomputed, as activation
checkpointing does), so memory grows with `chunk x vocab`, not `tokens x vocab`. A model's own
logit transform (Gemma 2's soft-capping, Granite's scaling, Cohere's scale, a sampling
temperature) is a function of the chunk's logits (`logit_transform`), recomputed with them, so
its gradient is exact. The entropy is a metric: computed in the forward, no gradient.

Only each token's log-sum-exp is kept for backward. Without a transform the backward builds
d log p(y) / dz = onehot(y) - softmax(z) in place from the recomputed logits and that log-sum-exp
(one matmul, three passes over the chunk, then the two matmuls of the gradients); with one it
lets autograd differentiate the recomputed chunk through the transform.

Shapes: hidden [N, H] (rows of a packed or flattened batch), weight [V, H] (the output
embedding), bias [V] or None, targets [N] (negative ids are padding: log-prob 0 there).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

DEFAULT_CHUNK = 512


def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    targets: torch.Tensor, transform: Callable | None):
    """log softmax(transform(hidden @ weight.T + bias))[target] of one chunk, in float32."""
    return _chunk_logprobs_from(torch.nn.functional.linear(hidden, weight, bias).float(), targets, transform)


def _chunk_logprobs_from(logits: torch.Tensor, targets: torch.Tensor, transform: Callable | None):
    if transform is not None:
        logits = transform(logits)
    lse = torch.logsumexp(logits, -1)
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked - lse) * (targets >= 0), logits, lse


class _ChunkedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, transform, with_entropy):
        logp = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else None
        with torch.no_grad():
            for s in range(0, hidden.shape[0], chunk):
                sl = slice(s, s + chunk)
                lp, logits, lse[sl] = _chunk_logprobs(hidden[sl], weight, bias, targets[sl], transform)
                logp[sl] = lp
                if with_entropy:  # H = -sum_v p_v log p_v, log p = z - lse made in place
                    log_p = logits.sub_(lse[sl, None])
                    entropy[sl] = -torch.linalg.vecdot(log_p.exp(), log_p)
                    del log_p
                del logits
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk, ctx.transform = chunk, transform
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
        for s in range(0, hidden.shape[0], ctx.chunk):
            sl = slice(s, s + ctx.chunk)
            h, t = hidden[sl], targets[sl]
            g = grad_logp[sl].float() * (t >= 0)
            if ctx.transform is None:  # d log p(y) / dz = onehot(y) - softmax(z): built in place
                with torch.no_grad():
                    dz = torch.nn.functional.linear(h, weight, bias).float().sub_(lse[sl, None]).exp_()
                    dz.mul_(-g[:, None]).scatter_add_(-1, t.clamp(min=0)[:, None], g[:, None])
            else:  # recompute the chunk through the transform and let autograd differentiate it
                with torch.enable_grad():
                    z = torch.nn.functional.linear(h, weight, bias).float().requires_grad_()
                    lp, _, _ = _chunk_logprobs_from(z, t, ctx.transform)
                    dz, = torch.autograd.grad(lp, z, grad_logp[sl])
            dz = dz.to(weight.dtype)
            if need_h:
                grad_h[sl] = dz @ weight
            if need_w:
                grad_w += (dz.T @ h).float()
            if need_b:
                grad_b += dz.float().sum(0)
        return (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None, None, None, None, None)


def chunked_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           bias: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK,
                           logit_transform: Callable | None = None,
                           entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-prob of each target [N] with gradient, entropy of each position's distribution [N]
    without, or None when not asked for), computed `chunk` tokens at a time; `hidden` may be
    [..., H] with `targets` [...]."""
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    shape = targets.shape
    logp, ent = _ChunkedLogProbs.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias,
                                       targets.reshape(-1), chunk, logit_transform, entropy)
    return logp.reshape(shape), ent.reshape(shape) if ent is not None else None


def softcap(cap: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Gemma 2's final_logit_softcapping: cap * tanh(logits / cap)."""
    return lambda z: torch.tanh(z / cap) * cap


def scale(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Cohere's logit_scale (factor), Granite's 1 / logits_scaling, 1 / a sampling temperature."""
    return lambda z: z * factor
