"""The small records a training step passes between its phases, and the run's own state.

`RunState` is what a checkpoint saves of the loop itself (beside models, optimisers, schedules,
sampler and RNGs); `CreditStats` and `PolicyStats` are what the two update phases return.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import distributed as dist_utils


class DeviceSums:
    """Named per-step sums that stay on the device while micro-batches add to them (no host sync
    per term), read once, summed over ranks, by `total()`."""

    def __init__(self, keys, device):
        self.keys = tuple(keys)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.values = torch.zeros(len(self.keys), dtype=torch.float64, device=device)

    def add(self, key: str, value) -> None:
        self.values[self.index[key]] += value.detach().double() if torch.is_tensor(value) else float(value)

    def total(self) -> dict[str, float]:
        return dict(zip(self.keys, dist_utils.sum_tensor(self.values)))


@dataclass
class RunState:
    step: int = 0  # steps done
    actor_steps: int = 0  # policy optimiser steps taken (none while frozen or skipped)
    nonfinite_streak: int = 0  # steps in a row whose loss or gradient was not finite
    best: dict | None = None  # {"step", "eval_pass@1"} of the best evaluation so far


@dataclass
class CreditStats:
    """The credit stage of one step (`oreal.training.credit`): its BCE on the outcomes, its
    optimiser step, and the scores it gave the batch before that step."""
    stepped: bool = False  # False without a credit model, or when its loss or gradient was not finite
    finite: bool = True
    loss: float | None = None  # mean BCE over the selected responses
    acc: float | None = None  # share whose sequence score is on the right side of 0.5
    pair_rank: float | None = None  # share of (right, wrong) pairs of a question ranked right
    lr: float | None = None  # the learning rate of this step
    seconds: float = 0.0
    scores: object = None  # [N, T] scores w_t before the step (a tensor; None without a credit model)

    def metrics(self) -> dict:
        out = {"credit_lr": self.lr, "credit_seconds": self.seconds}
        if self.stepped:
            out.update(credit_loss=self.loss, credit_acc=self.acc, credit_pair_rank=self.pair_rank)
        return out


@dataclass
class PolicyStats:
    """The policy's phase of one step: its gradients and its optimiser step."""
    updated: bool = False  # False while frozen, or when no step's loss and gradient were finite
    finite: bool = True  # every optimiser step's loss and gradient were
    steps: int = 0  # optimiser steps taken (algo.updates_per_batch x algo.mini_batches, less skipped ones)
    # loss_pos, loss_neg, loss_kl, kl, entropy, ... (algo.LOSS_SUMS) over all ranks and all optimiser steps
    sums: dict = field(default_factory=dict)
    tokens: float = 1.0  # response tokens of the batch times the update passes (the KL and entropy normaliser)
    seconds: float = 0.0  # forwards and backwards
    optim_seconds: float = 0.0
    ratio_max: float = 0.0  # the largest pi_trainer / pi_engine of a sampled token in the loss

    def metrics(self) -> dict:
        out = {"actor_updated": self.updated, "policy_steps": self.steps, "policy_seconds": self.seconds, "optim_seconds": self.optim_seconds}
        n = self.sums.get("ratio_tokens", 0.0)
        if n:
            out.update(engine_ratio_mean=self.sums["ratio_sum"] / n, engine_ratio_max=self.ratio_max,
                       engine_ratio_outside=self.sums["ratio_outside"] / n)
            if self.sums.get("tis_tokens"):  # algo.tis_cap: the factor the token weights were multiplied by
                out.update(tis_mean=self.sums["tis_sum"] / n, tis_capped=self.sums["tis_capped"] / n)
        if self.updated:
            s = self.sums
            out.update(loss_pos=s["loss_pos"], loss_neg=s["loss_neg"], loss_kl=s["loss_kl"],
                       loss=s["loss_pos"] + s["loss_neg"] + s["loss_kl"], kl=s["kl"] / self.tokens,
                       entropy=s["entropy"] / self.tokens)
            if s.get("clip_tokens"):  # an objective that clips: the share of the loss's tokens it clipped
                out.update(clip_frac=s["clipped"] / s["clip_tokens"])
        return out


@dataclass
class StepResult:
    """What `Trainer.step()` returns: the step's metrics (every key of METRIC_FIELDS) and the
    responses to dump (`dump_per_step` of them, with reward, advantage and token weights)."""
    metrics: dict
    trajectories: list[dict] = field(default_factory=list)


@dataclass
class StepControl:
    """What the step-end callbacks decided, voted across ranks where it matters."""
    save: bool = False  # write a checkpoint now (a new best evaluation, the period, a stop)
    stop: str | None = None  # the signal's name when a run must stop after this step
    out_of_time: bool = False  # max_seconds passed: save and leave the loop
