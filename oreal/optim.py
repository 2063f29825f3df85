"""Optimiser and schedule shared by the recipes."""
from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate: linear warmup, then cosine down to `min_ratio`.

    transformers' `get_cosine_with_min_lr_schedule_with_warmup` is the same curve from the end of
    the warm-up to `total` (tested), but not at the two ends, so it is not used: its first warm-up
    step has a learning rate of 0 (an update that does nothing; here step s of the warm-up uses
    (s + 1) / warmup), and past `total` its cosine climbs again where this one stays at the floor
    (a resumed run with more steps than planned)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model, weight_decay: float, own_lr: dict | None = None) -> list[dict]:
    """AdamW groups of a model's trainable parameters: weight decay on matrices only (none on
    biases and norms); `own_lr` maps parameters to a learning rate of their own (no weight decay)."""
    own_lr = own_lr or {}
    special = {id(p) for p in own_lr}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad and id(p) not in special:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return groups + [{"params": [p], "weight_decay": 0.0, "lr": g} for p, g in own_lr.items() if p.requires_grad]


def make_optimizer(params, lr: float, weight_decay: float, warmup: int, total: int, min_lr: float,
                   eps: float = 1e-8, betas: tuple[float, float] = (0.9, 0.999)):
    """AdamW with warm-up + cosine over a model (grouped by `param_groups`) or over groups given;
    the schedule scales every group."""
    groups = param_groups(params, weight_decay) if isinstance(params, torch.nn.Module) else params
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    ratio = min_lr / lr if lr > 0 else 0.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total, ratio))
    return opt, sched


def guarded_step(model, opt, sched, clip: float, loss_sum: float) -> bool:
    """Clip and step, unless the loss or the gradient is not finite: then leave weights, optimiser
    state and schedule untouched. Returns whether it stepped. The gradients are freed either way,
    so they do not sit beside the rollout's KV cache until the next update (a 7B policy's float32
    gradients are 30 GB, 3.8 GB a GPU over 8)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
    stepped = bool(torch.isfinite(torch.as_tensor(loss_sum)) and torch.isfinite(norm))
    if stepped:
        opt.step()
        sched.step()
    opt.zero_grad(set_to_none=True)
    return stepped
