"""Group advantage estimators: the K rewards of one question -> K advantages.

Each estimator maps [B, K] rewards to [B, K] advantages, `fn(rewards, eps)` (`eps`: the floor of a
normalising estimator's standard deviation, `algo.adv_eps`; the others ignore it), and registers
itself in `ADVANTAGE_ESTIMATORS` (the registry `AlgoConfig.advantage` names) with
`@register_advantage(name, help=..., min_samples=...)`.
"""
from __future__ import annotations

import torch

from .registry import Registry

ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
register_advantage = ADVANTAGE_ESTIMATORS.register


@register_advantage("rloo", help="r - mean of the other K-1", min_samples=2)
def adv_rloo(rewards: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Leave-one-out baseline: r_i minus the mean of the other K-1 rewards of the question."""
    K = rewards.size(-1)
    if K < 2:
        raise ValueError("RLOO needs at least 2 samples per question")
    total = rewards.sum(-1, keepdim=True)
    return rewards - (total - rewards) / (K - 1)


@register_advantage("grpo", help="(r - mean) / (std + adv_eps)")
def adv_grpo(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised: (r - mean) / (std + eps), std unbiased as in TRL's GRPOTrainer and the
    reference (which takes eps = 1e-8; TRL and oreal's default 1e-4)."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True) if rewards.size(-1) > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


@register_advantage("drgrpo", help="r - mean")
def adv_drgrpo(rewards: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Dr. GRPO: mean-centred, no division by the standard deviation."""
    return rewards - rewards.mean(-1, keepdim=True)


@register_advantage("none", help="r")
def adv_none(rewards: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Plain REINFORCE: the reward itself."""
    return rewards.clone()


def group_advantages(rewards: torch.Tensor, method: str = "rloo", eps: float = 1e-4) -> torch.Tensor:
    if method not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {method!r}; choose from {sorted(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[method](rewards.float(), eps)
