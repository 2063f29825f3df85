"""The policy objective of one micro-batch, composed from the terms in `losses`: the one
function the trainer calls and the tests check against a slow per-token reference."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from .losses import kl_penalty, negative_pg_loss, normalise, pg_loss, positive_bc_loss

if TYPE_CHECKING:
    from .config import AlgoConfig


@dataclass(frozen=True)
class TokenCounts:
    """Global counts over the selected responses of the whole batch (every rank, every
    micro-batch): each micro-batch divides by these, so accumulation and data parallelism give
    the update of one big batch."""
    pos: float  # response tokens of correct responses
    neg: float  # response tokens of incorrect responses
    seqs: int  # selected responses
    max_new_tokens: int  # for Dr. GRPO's constant normaliser

    @property
    def all(self) -> float:
        return self.pos + self.neg

    @property
    def const(self) -> int:
        return self.seqs * self.max_new_tokens


@dataclass
class PolicyLoss:
    loss: torch.Tensor  # pos + neg + kl_coef * kl: what backward() runs on
    pos: torch.Tensor  # the positives' term, normalised
    neg: torch.Tensor  # the negatives' term, normalised
    kl: torch.Tensor  # the KL term, normalised, before kl_coef
    kl_sum: torch.Tensor  # detached sum of the per-token KL estimate (a metric)


def oreal_objective(logp, mask, positive, adv, weights, counts: TokenCounts, cfg: "AlgoConfig"):
    """OREAL: lambda+ * w * -log pi (* A) over the positives' tokens, divided by their count, plus
    -lambda- * w * A * ratio over the negatives' tokens, divided by theirs."""
    pm, nm = mask * positive[:, None], mask * (~positive)[:, None]
    pos = normalise(positive_bc_loss(logp, pm, weights, adv, cfg.lambda_pos, cfg.pos_mult_adv), counts.pos)
    neg = normalise(negative_pg_loss(logp, logp.detach(), nm, weights, adv, cfg.lambda_neg), counts.neg)
    return pos, neg


def pg_objective(logp, mask, positive, adv, weights, counts: TokenCounts, cfg: "AlgoConfig"):
    """The baselines: -w * A * ratio on every token, divided by all tokens (or by sequences x
    max_new_tokens with loss_norm=constant, Dr. GRPO); reported split by side."""
    pm, nm = mask * positive[:, None], mask * (~positive)[:, None]
    denom = counts.const if cfg.loss_norm == "constant" else counts.all
    return (normalise(pg_loss(logp, logp.detach(), pm, adv, weights), denom),
            normalise(pg_loss(logp, logp.detach(), nm, adv, weights), denom))


# algo.objective: each takes (logp, mask, positive, adv, weights, counts, cfg) and returns the
# positives' and the negatives' normalised terms; the KL term is added by `policy_loss`.
OBJECTIVES = {"bc": oreal_objective, "pg": pg_objective}


def policy_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor,
                adv: torch.Tensor, weights: torch.Tensor, counts: TokenCounts, cfg: "AlgoConfig") -> PolicyLoss:
    """OREAL.md step 7 on one micro-batch: the objective `cfg.objective` names (OBJECTIVES) plus
    kl_coef * KL(pi || ref) over all tokens.

    logp, ref_logp, mask, weights: [N, T] (mask 1 on response tokens); positive, adv: [N].
    """
    kl_tok = kl_penalty(logp, ref_logp, cfg.kl_kind)
    kl = normalise((kl_tok * mask).sum(), counts.all)
    pos, neg = OBJECTIVES[cfg.objective](logp, mask, positive, adv, weights, counts, cfg)
    return PolicyLoss(pos + neg + cfg.kl_coef * kl, pos, neg, kl, (kl_tok.detach() * mask).sum())
