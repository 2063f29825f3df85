"""The math of OREAL and its baselines as pure functions on tensors (no I/O, no models).

Shapes: B questions, K samples each; N selected responses, T response tokens (right-padded,
`mask` is 1 on real tokens). Rewards are 1.0 (correct) / 0.0 (incorrect).
Losses return *sums* over tokens; the caller divides by global token counts (`normalise`), so
micro-batches with gradient accumulation give exactly the update of one big batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- advantages


def adv_rloo(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline: r_i minus the mean of the other K-1 rewards of the question."""
    K = rewards.size(-1)
    if K < 2:
        raise ValueError("RLOO needs at least 2 samples per question")
    total = rewards.sum(-1, keepdim=True)
    return rewards - (total - rewards) / (K - 1)


def adv_grpo(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised: (r - mean) / (std + eps), std unbiased as in TRL's GRPOTrainer."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True) if rewards.size(-1) > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


def adv_drgrpo(rewards: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: mean-centred, no division by the standard deviation."""
    return rewards - rewards.mean(-1, keepdim=True)


def adv_none(rewards: torch.Tensor) -> torch.Tensor:
    """Plain REINFORCE: the reward itself."""
    return rewards.clone()


ADVANTAGE_ESTIMATORS = {"rloo": adv_rloo, "grpo": adv_grpo, "drgrpo": adv_drgrpo, "none": adv_none}


def group_advantages(rewards: torch.Tensor, method: str = "rloo") -> torch.Tensor:
    if method not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {method!r}; choose from {sorted(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[method](rewards.float())


# --------------------------------------------------------------------------- filtering and selection


def pass_rate_filter(rewards: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """[B] bool: keep questions whose pass rate p satisfies low < p < high (all-wrong and
    all-right groups carry no signal)."""
    p = rewards.float().mean(-1)
    return (p > low) & (p < high)


def select_pairs(rewards: torch.Tensor, keep: torch.Tensor, mode: str = "pair",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, K] bool of responses that enter the loss.

    `pair`: one random correct and one random incorrect response per kept question (the
    reference default); `all`: every response of every kept question.
    """
    B, K = rewards.shape
    sel = torch.zeros(B, K, dtype=torch.bool)
    if mode == "all":
        sel[keep] = True
        return sel
    if mode != "pair":
        raise ValueError(f"unknown selection mode {mode!r}; choose 'pair' or 'all'")
    for b in torch.nonzero(keep).flatten().tolist():
        for want in (1.0, 0.0):
            idx = torch.nonzero(rewards[b] == want).flatten()
            if idx.numel():
                j = idx[torch.randint(idx.numel(), (1,), generator=generator)].item()
                sel[b, j] = True
    return sel


# --------------------------------------------------------------------------- token-level reward model


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def token_rm_sequence_loss(token_logits: torch.Tensor, mask: torch.Tensor,
                           rewards: torch.Tensor) -> torch.Tensor:
    """Per-sequence BCE of sigmoid(mean_t w_t) against the outcome r; returns the *sum* over
    sequences (divide by the global number of sequences)."""
    seq_logit = masked_mean(token_logits.float(), mask.float())
    return F.binary_cross_entropy_with_logits(seq_logit, rewards.float(), reduction="sum")


def running_correctness(token_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """c_t = sigmoid(mean_{s<=t} w_s) on real tokens (0 on padding)."""
    m = mask.float()
    csum = (token_logits.float() * m).cumsum(-1)
    count = m.cumsum(-1).clamp(min=1)
    return torch.sigmoid(csum / count) * m


def token_importance_weights(token_logits: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor,
                             tau: float = 0.5, mode: str = "threshold",
                             topk_ratio: float = 0.2) -> torch.Tensor:
    """Detached per-token weights from the token RM.

    threshold: positives clamp((c_t - tau)/(1 - tau), 0, 1), negatives
    clamp(((1 - c_t) - tau)/(1 - tau), 0, 1). topk: the score (c_t for positives, 1 - c_t for
    negatives) on the top `topk_ratio` of each sequence's tokens, divided by that sequence's
    largest score, and 0 elsewhere.
    """
    with torch.no_grad():
        c = running_correctness(token_logits, mask)
        pos = positive.view(-1, 1).bool()
        score = torch.where(pos, c, 1.0 - c) * mask.float()
        if mode == "threshold":
            w = ((score - tau) / (1.0 - tau)).clamp(0.0, 1.0)
        elif mode == "topk":
            w = torch.zeros_like(score)
            for i in range(score.size(0)):
                n = int(mask[i].sum())
                if n == 0:
                    continue
                k = max(1, math.ceil(topk_ratio * n))
                vals, idx = torch.topk(score[i].masked_fill(mask[i] == 0, -1.0), k)
                top = vals.max().clamp(min=1e-8)
                w[i, idx] = vals / top
        else:
            raise ValueError(f"unknown token weight mode {mode!r}; choose 'threshold' or 'topk'")
        return w * mask.float()


# --------------------------------------------------------------------------- policy losses


def positive_bc_loss(logp: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor,
                     adv: torch.Tensor, lambda_pos: float = 1.0,
                     pos_mult_adv: bool = True) -> torch.Tensor:
    """Behaviour cloning on positives: sum_t lambda+ * w_t * (-log pi(y_t)) [* A]."""
    scale = adv.view(-1, 1) if pos_mult_adv else 1.0
    return (lambda_pos * weights * scale * (-logp) * mask).sum()


def negative_pg_loss(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                     weights: torch.Tensor, adv: torch.Tensor,
                     lambda_neg: float = 0.5) -> torch.Tensor:
    """Policy gradient on negatives: sum_t -lambda- * w_t * A * pi/pi_old (the ratio is 1 in
    value on-policy; its gradient is that of log pi, i.e. REINFORCE with the shaped A)."""
    ratio = torch.exp(logp - old_logp.detach())
    return (-lambda_neg * weights * adv.view(-1, 1) * ratio * mask).sum()


def pg_loss(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """The baselines' term on every sample: sum_t -w_t * A * pi/pi_old."""
    w = weights if weights is not None else torch.ones_like(logp)
    return (-w * adv.view(-1, 1) * torch.exp(logp - old_logp.detach()) * mask).sum()


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL(pi || ref) estimate from sampled tokens: k1, k3 or mse."""
    d = ref_logp - logp
    if kind == "k1":
        return -d
    if kind == "k3":
        return torch.exp(d) - d - 1.0
    if kind == "mse":
        return 0.5 * d * d
    raise ValueError(f"unknown KL estimator {kind!r}; choose 'k1', 'k3' or 'mse'")


KL_ESTIMATORS = ("k1", "k3", "mse")


def normalise(total: torch.Tensor, count: int | float) -> torch.Tensor:
    """Divide a token sum by a *global* token count (never by a micro-batch's own count)."""
    return total / max(float(count), 1.0)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position; logits [N, T, V], targets [N, T]."""
    return torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
