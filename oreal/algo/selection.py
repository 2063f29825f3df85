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


def _select_all(rewards: torch.Tensor, keep: torch.Tensor, generator=None, eligible=None) -> torch.Tensor:
    sel = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
    sel[keep] = True
    return sel if eligible is None else sel & eligible


def _select_pair(rewards: torch.Tensor, keep: torch.Tensor, generator=None, eligible=None) -> torch.Tensor:
    sel = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
    for b in torch.nonzero(keep).flatten().tolist():
        for want in (1.0, 0.0):
            match = rewards[b] == want
            idx = torch.nonzero(match if eligible is None else match & eligible[b]).flatten().cpu()
            if idx.numel():  # the draw is on the (CPU) generator, so any device picks the same
                j = idx[torch.randint(idx.numel(), (1,), generator=generator)].item()
                sel[b, j] = True
    return sel


SELECTIONS = {"pair": _select_pair, "all": _select_all}

# algo.overlong: what becomes of a response cut at max_new_tokens (`Rollout.finished` false)
OVERLONG = {
    "incorrect": "graded, and incorrect (OREAL.md step 2): it enters the loss as a negative",
    "mask": "DAPO's overlong filtering: it counts in its group's pass rate and advantages (as incorrect) "
            "but never enters the loss, its tokens in no sum and no normaliser",
}


def select_pairs(rewards: torch.Tensor, keep: torch.Tensor, mode: str = "pair",
                 generator: torch.Generator | None = None, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """[B, K] bool of responses that enter the loss.

    `pair`: one random correct and one random incorrect response per kept question (the
    reference default); `all`: every response of every kept question. `eligible` [B, K] bool:
    only these may be chosen (None: all).
    """
    if mode not in SELECTIONS:
        raise ValueError(f"unknown selection mode {mode!r}; choose from {sorted(SELECTIONS)}")
    return SELECTIONS[mode](rewards, keep, generator, eligible)


@dataclass
class Selection:
    """What enters the loss, decided on the whole batch (the same on every rank)."""
    keep: torch.Tensor  # [B] questions whose pass rate is neither 0 nor 1 (all, without the filter)
    rows: list[tuple[int, int]]  # (question, sample) of every selected response, in order
    adv: torch.Tensor  # [B, K] advantages
    positives: int  # selected correct responses


def select(rewards: torch.Tensor, cfg, generator: torch.Generator | None = None,
           cut: torch.Tensor | None = None) -> Selection:
    """OREAL.md steps 3-5 on the [B, K] rewards: the pass-rate filter (`cfg.filter`), the responses
    kept (`cfg.select`) and the advantages (`cfg.advantage`); `cfg` is an AlgoConfig. `cut` [B, K]
    bool: the responses cut at max_new_tokens; with `cfg.overlong == "mask"` none of them is
    selected (the filter and the advantages still count them, with their reward)."""
    keep = pass_rate_filter(rewards) if cfg.filter else torch.ones(len(rewards), dtype=torch.bool)
    eligible = ~cut.bool() if cut is not None and cfg.overlong == "mask" else None
    chosen = select_pairs(rewards, keep, cfg.select, generator, eligible)
    adv = group_advantages(rewards, cfg.advantage, cfg.adv_eps)
    rows = [(b, k) for b, k in chosen.nonzero().tolist()]
    positives = int(sum(rewards[b, k].item() > 0.5 for b, k in rows))
    return Selection(keep, rows, adv, positives)
