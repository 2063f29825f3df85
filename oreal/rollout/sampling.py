"""Drawing the next token: pure functions on tensors, shared by every HF engine.

Each row's random number at step t is a counter-based hash of (question seed, sample index, t)
(splitmix64 in int64 tensor ops), so one batched op draws for every row, on any device, and a
question's rollouts do not depend on what else is in the batch (data-parallel ranks that split a
batch sample what one process would). Sampling is inverse-CDF on the filtered distribution: exact,
one uniform per row and token.
"""
from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on a [B, V] tensor of logits."""
    logits = logits / max(temperature, 1e-8)
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return logits


_M1, _M2 = -4658895280553007687, -7723592293110705685  # splitmix64 constants as signed int64
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on an int64 tensor (multiplication wraps modulo 2**64)."""
    x = (x ^ _srl(x, 30)) * _M1
    x = (x ^ _srl(x, 27)) * _M2
    return x ^ _srl(x, 31)


def _int64(v: int) -> int:
    """A Python int wrapped to the signed int64 range, as tensor arithmetic would wrap it."""
    return (v + 2**63) % 2**64 - 2**63


def row_keys(seeds: list[int], k: int, device) -> torch.Tensor:
    """[len(seeds) * k] int64 keys, one per (question seed, sample index), prompt-major: a
    Weyl-sequence step per sample index on top of the hashed seed, hashed again."""
    s = torch.tensor([_int64(int(x)) for x in seeds], dtype=torch.long, device=device)
    j = torch.tensor([_int64((i + 1) * _GOLDEN) for i in range(k)], dtype=torch.long, device=device)
    return mix64(mix64(s)[:, None] + j[None, :]).flatten()


def counter_uniform(keys: torch.Tensor, step: int) -> torch.Tensor:
    """[B] uniforms in [0, 1) from each row's key and the step, in float64 (53 bits)."""
    x = mix64(keys + _int64((step + 1) * _GOLDEN))
    return _srl(x, 11).to(torch.float64) * 2.0 ** -53


def sample_from_logits(logits: torch.Tensor, u: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """[B] token ids: inverse CDF of the temperature/top-k/top-p distribution at the uniforms `u`
    (greedy when temperature is 0). A token of probability 0 is never drawn."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float(), cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1).double()
    cdf = probs.cumsum(-1)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=logits.size(-1) - 1)
