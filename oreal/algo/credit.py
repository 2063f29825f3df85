"""Token credit: the credit model's objective and the token weights it gives the policy loss.

The credit model (the paper's token RM, or a log-prob credit: `oreal.models.credit`) emits one
score w_t per response token. Trained on outcomes only: the sequence score is sigmoid(mean_t w_t),
the loss is BCE against r. Its running correctness c_t = sigmoid(mean_{s<=t} w_s) weights the
policy's tokens (`TOKEN_WEIGHTS`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def credit_sequence_loss(token_logits: torch.Tensor, mask: torch.Tensor,
                           rewards: torch.Tensor) -> torch.Tensor:
    """Per-sequence BCE of sigmoid(mean_t w_t) against the outcome r; returns the *sum* over
    sequences (divide by the global number of sequences)."""
    seq_logit = masked_mean(token_logits.float(), mask.float())
    return F.binary_cross_entropy_with_logits(seq_logit, rewards.float(), reduction="sum")


def credit_correct(token_logits: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """How many non-empty sequences the credit model classifies right (sequence logit > 0 <=> correct), as
    a 0-d tensor on the logits' device (no host sync)."""
    seq_score = masked_mean(token_logits.detach(), mask)
    return (((seq_score > 0) == positive) & (mask.sum(-1) > 0)).sum()


def credit_correct_count(token_logits: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor) -> int:
    return int(credit_correct(token_logits, mask, positive).item())


def running_correctness(token_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """c_t = sigmoid(mean_{s<=t} w_s) on real tokens (0 on padding)."""
    m = mask.float()
    csum = (token_logits.float() * m).cumsum(-1)
    count = m.cumsum(-1).clamp(min=1)
    return torch.sigmoid(csum / count) * m


def _threshold(score: torch.Tensor, mask: torch.Tensor, tau: float, topk_ratio: float) -> torch.Tensor:
    return ((score - tau) / (1.0 - tau)).clamp(0.0, 1.0)


def _topk(score: torch.Tensor, mask: torch.Tensor, tau: float, topk_ratio: float) -> torch.Tensor:
    w = torch.zeros_like(score)
    for i in range(score.size(0)):
        n = int(mask[i].sum())
        if n == 0:
            continue
        k = max(1, math.ceil(topk_ratio * n))
        vals, idx = torch.topk(score[i].masked_fill(mask[i] == 0, -1.0), k)
        top = vals.max().clamp(min=1e-8)
        w[i, idx] = vals / top
    return w


def _topk_minmax(score: torch.Tensor, mask: torch.Tensor, tau: float, topk_ratio: float) -> torch.Tensor:
    """The reference's `topk_rescale`: the int(n * ratio) highest scores of each sequence, min-max
    rescaled to [0, 1] (all ones when they are equal), 0 elsewhere. A sequence with n * ratio < 1
    keeps none (the reference's `torch.topk` of 0 then fails on `values.max()`; here its weights
    are 0)."""
    w = torch.zeros_like(score)
    for i in range(score.size(0)):
        real = mask[i].bool()
        k = int(int(real.sum()) * topk_ratio)
        if k == 0:
            continue
        vals, idx = torch.topk(score[i][real], k)
        lo, hi = vals.min(), vals.max()
        w[i, real.nonzero().flatten()[idx]] = (vals - lo) / (hi - lo) if hi != lo else torch.ones_like(vals)
    return w


# `none` is not here: without a credit model every weight is 1 (the caller passes ones)
TOKEN_WEIGHTS = {"threshold": _threshold, "topk": _topk, "topk_minmax": _topk_minmax}
# Whose tokens take the credit model's weights; the other side's tokens weigh 1.
WEIGHTED_SIDES = {
    "both": "positives and negatives, as the paper and the reference do",
    "negatives": "negatives only: a wrong answer's right prefix is spared, a correct response is cloned whole",
}


def token_importance_weights(token_logits: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor,
                             tau: float = 0.5, mode: str = "threshold",
                             topk_ratio: float = 0.2, sides: str = "both") -> torch.Tensor:
    """Detached per-token weights from the credit model's scores.

    threshold: positives clamp((c_t - tau)/(1 - tau), 0, 1), negatives
    clamp(((1 - c_t) - tau)/(1 - tau), 0, 1). topk: the score (c_t for positives, 1 - c_t for
    negatives) on the top ceil(`topk_ratio` * n) of each sequence's n tokens, divided by that
    sequence's largest score, and 0 elsewhere. topk_minmax: the reference's variant, int(ratio * n)
    tokens min-max rescaled. `sides` (WEIGHTED_SIDES): with "negatives", every token of a
    positive weighs 1.
    """
    if mode not in TOKEN_WEIGHTS:
        raise ValueError(f"unknown token weight mode {mode!r}; choose from {sorted(TOKEN_WEIGHTS)}")
    if sides not in WEIGHTED_SIDES:
        raise ValueError(f"unknown weighted sides {sides!r}; choose from {sorted(WEIGHTED_SIDES)}")
    with torch.no_grad():
        c = running_correctness(token_logits, mask)
        pos = positive.view(-1, 1).bool()
        m = mask.float()
        score = torch.where(pos, c, 1.0 - c) * m
        w = TOKEN_WEIGHTS[mode](score, mask, tau, topk_ratio) * m
        return torch.where(pos, m, w) if sides == "negatives" else w


def pair_ranking(scores: torch.Tensor, positive: torch.Tensor, groups: list) -> tuple[float, int]:
    """Over every (correct, incorrect) pair of responses to the same question (`groups` names
    each response's question): how many rank the correct one higher (ties count half), and how
    many pairs there are. wins / pairs is the credit model's pair ranking (0.5 is chance)."""
    wins, n = 0.0, 0
    by_group: dict = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    for rows in by_group.values():
        pos = [scores[i] for i in rows if positive[i]]
        neg = [scores[i] for i in rows if not positive[i]]
        for p in pos:
            for q in neg:
                wins += 1.0 if p > q else 0.5 if p == q else 0.0
                n += 1
    return wins, n


# `algo.credit_init: auto`: the log-prob credit's calibration from the first batch's log-probs
AUTO_INIT = "auto"
CALIBRATION_SUMS = 6  # what `calibration_sums` gives and `auto_calibration` reads (summed over ranks)


def calibration_sums(logp: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor) -> list[float]:
    """[sum of positives' mean log-probs, positives, the same for negatives, sum of all token
    log-probs, tokens] of one rank's rows (empty rows left out): sums, so that every rank reaches
    the same calibration from their totals (`oreal.distributed.sum_floats`)."""
    m = mask.float()
    real = m.sum(-1) > 0
    seq = masked_mean(logp.float(), m).double()
    pos = positive.bool() & real
    neg = ~positive.bool() & real
    return [seq[pos].sum().item(), float(pos.sum()), seq[neg].sum().item(), float(neg.sum()),
            (logp.double() * m).sum().item(), m.sum().item()]


def auto_calibration(sums: list[float], tau: float, scale: float = 1.0) -> tuple[float, float]:
    """a, b of w_t = a log pi(y_t) + b such that the scores straddle the threshold tau: the midpoint
    of the positives' and negatives' mean sequence log-probs (the mean token log-prob when a side is
    missing) maps to logit(tau), so c_t = sigmoid(mean w) sits at tau there; a stays `scale`
    (log-probs in nats). At a, b = 1, 0 a model with a large vocabulary starts with log-probs
    near -log(vocab) and c_t near 0: no positive token passes tau = 0.5."""
    pos_sum, n_pos, neg_sum, n_neg, tok_sum, n_tok = sums
    if n_tok <= 0:
        raise ValueError("algo.credit_init=auto: the first batch has no response tokens to calibrate on")
    if n_pos > 0 and n_neg > 0:
        mid = 0.5 * (pos_sum / n_pos + neg_sum / n_neg)
    else:
        mid = tok_sum / n_tok
    return scale, math.log(tau / (1.0 - tau)) - scale * mid
