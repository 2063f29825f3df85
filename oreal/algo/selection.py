"""Which responses enter the loss: the pass-rate filter and pair selection."""
from __future__ import annotations

import torch


def pass_rate_filter(rewards: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """[B] bool: keep questions whose pass rate p satisfies low < p < high (all-wrong and
    all-right groups carry no signal)."""
    p = rewards.float().mean(-1)
    return (p > low) & (p < high)


def _select_all(rewards: torch.Tensor, keep: torch.Tensor, generator=None) -> torch.Tensor:
    sel = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
    sel[keep] = True
    return sel


def _select_pair(rewards: torch.Tensor, keep: torch.Tensor, generator=None) -> torch.Tensor:
    sel = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
    for b in torch.nonzero(keep).flatten().tolist():
        for want in (1.0, 0.0):
            idx = torch.nonzero(rewards[b] == want).flatten().cpu()
            if idx.numel():  # the draw is on the (CPU) generator, so any device picks the same
                j = idx[torch.randint(idx.numel(), (1,), generator=generator)].item()
                sel[b, j] = True
    return sel


SELECTIONS = {"pair": _select_pair, "all": _select_all}


def select_pairs(rewards: torch.Tensor, keep: torch.Tensor, mode: str = "pair",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, K] bool of responses that enter the loss.

    `pair`: one random correct and one random incorrect response per kept question (the
    reference default); `all`: every response of every kept question.
    """
    if mode not in SELECTIONS:
        raise ValueError(f"unknown selection mode {mode!r}; choose from {sorted(SELECTIONS)}")
    return SELECTIONS[mode](rewards, keep, generator)
