"""Log-probs and entropy of the sampled tokens from hidden states, without a [tokens x vocab] tensor.

The output layer is applied one chunk of tokens at a time: each chunk's logits live only while
that chunk is processed, in the forward and again in the backward (recomputed, as activation
checkpointing does), so memory grows with `chunk x vocab`, not `tokens x vocab`. A model's own
logit transform (Gemma 2's soft-capping, Granite's scaling, Cohere's scale, a sampling
temperature) is a function of the chunk's logits (`logit_transform`), recomputed with them, so
its gradient is exact. The entropy is a metric: computed in the forward, no gradient.

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
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    if transform is not None:
        logits = transform(logits)
    lse = torch.logsumexp(logits, -1)
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked - lse) * (targets >= 0), logits, lse


class _ChunkedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, transform):
        logp = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp)
        with torch.no_grad():
            for s in range(0, hidden.shape[0], chunk):
                lp, logits, lse = _chunk_logprobs(hidden[s:s + chunk], weight, bias, targets[s:s + chunk], transform)
                logp[s:s + chunk] = lp
                p = torch.softmax(logits, -1)
                entropy[s:s + chunk] = lse - (p * logits).sum(-1)
                del logits, p
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk, ctx.transform = chunk, transform
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, targets = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b and bias is not None else None
        inputs_of = lambda h: [x for x, need in ((h, need_h), (weight, need_w), (bias, need_b))  # noqa: E731
                               if need and x is not None]
        for s in range(0, hidden.shape[0], ctx.chunk):
            with torch.enable_grad():  # recompute this chunk's logits, then let autograd differentiate them
                h = hidden[s:s + ctx.chunk].detach().requires_grad_(need_h)
                lp, _, _ = _chunk_logprobs(h, weight, bias, targets[s:s + ctx.chunk], ctx.transform)
                grads = torch.autograd.grad(lp, inputs_of(h), grad_logp[s:s + ctx.chunk], allow_unused=True)
            grads = list(grads)
            if need_h:
                grad_h[s:s + ctx.chunk] = grads.pop(0)
            if need_w:
                g = grads.pop(0)
                if g is not None:
                    grad_w += g.float()
            if grad_b is not None:
                g = grads.pop(0)
                if g is not None:
                    grad_b += g.float()
        return (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None, None, None, None)


def chunked_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           bias: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK,
                           logit_transform: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each target [N] with gradient, entropy of each position's distribution [N]
    without), computed `chunk` tokens at a time; `hidden` may be [..., H] with `targets` [...]."""
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    shape = targets.shape
    logp, entropy = _ChunkedLogProbs.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias,
                                           targets.reshape(-1), chunk, logit_transform)
    return logp.reshape(shape), entropy.reshape(shape)


def softcap(cap: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Gemma 2's final_logit_softcapping: cap * tanh(logits / cap)."""
    return lambda z: torch.tanh(z / cap) * cap


def scale(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Cohere's logit_scale (factor), Granite's 1 / logits_scaling, 1 / a sampling temperature."""
    return lambda z: z * factor
