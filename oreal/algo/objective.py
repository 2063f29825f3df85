"""The policy objective of one micro-batch, composed from the terms in `losses`: the one
function the trainer calls and the tests check against a slow per-token reference."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import AlgoConfig
from .losses import kl_penalty, negative_pg_loss, normalise, pg_loss, positive_bc_loss


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


def policy_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor,
                adv: torch.Tensor, weights: torch.Tensor, counts: TokenCounts, cfg: AlgoConfig) -> PolicyLoss:
    """OREAL.md step 7 on one micro-batch.

    logp, ref_logp, mask, weights: [N, T] (mask 1 on response tokens); positive, adv: [N].
    `bc`: lambda+ * w * -log pi (* A) over positive tokens + -lambda- * w * A * ratio over
    negative tokens; `pg`: -w * A * ratio on every token over all tokens (or the constant).
    Plus kl_coef * KL(pi || ref) over all tokens.
    """
    kl_tok = kl_penalty(logp, ref_logp, cfg.kl_kind)
    kl = normalise((kl_tok * mask).sum(), counts.all)
    pm, nm = mask * positive[:, None], mask * (~positive)[:, None]
    if cfg.positive_loss == "bc":
        pos = normalise(positive_bc_loss(logp, pm, weights, adv, cfg.lambda_pos, cfg.pos_mult_adv), counts.pos)
        neg = normalise(negative_pg_loss(logp, logp.detach(), nm, weights, adv, cfg.lambda_neg), counts.neg)
    else:
        denom = counts.const if cfg.loss_norm == "constant" else counts.all
        pos = normalise(pg_loss(logp, logp.detach(), pm, adv, weights), denom)
        neg = normalise(pg_loss(logp, logp.detach(), nm, adv, weights), denom)
    return PolicyLoss(pos + neg + cfg.kl_coef * kl, pos, neg, kl, (kl_tok.detach() * mask).sum())
