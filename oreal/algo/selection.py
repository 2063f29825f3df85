"""Which responses enter the loss: the pass-rate filter, pair selection, and `select`, which
composes them with the group advantages as a training step does."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .advantages import group_advantages


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


@dataclass
class Selection:
    """What enters the loss, decided on the whole batch (the same on every rank)."""
    keep: torch.Tensor  # [B] questions whose pass rate is neither 0 nor 1 (all, without the filter)
    rows: list[tuple[int, int]]  # (question, sample) of every selected response, in order
    adv: torch.Tensor  # [B, K] advantages
    positives: int  # selected correct responses


def select(rewards: torch.Tensor, cfg, generator: torch.Generator | None = None) -> Selection:
    """OREAL.md steps 3-5 on the [B, K] rewards: the pass-rate filter (`cfg.filter`), the responses
    kept (`cfg.select`) and the advantages (`cfg.advantage`); `cfg` is an AlgoConfig."""
    keep = pass_rate_filter(rewards) if cfg.filter else torch.ones(len(rewards), dtype=torch.bool)
    chosen = select_pairs(rewards, keep, cfg.select, generator)
    adv = group_advantages(rewards, cfg.advantage, cfg.adv_eps)
    rows = [(b, k) for b, k in chosen.nonzero().tolist()]
    positives = int(sum(rewards[b, k].item() > 0.5 for b, k in rows))
    return Selection(keep, rows, adv, positives)
