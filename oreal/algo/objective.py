"""The policy objective of one micro-batch: a per-token loss (`OBJECTIVES`) aggregated to a scalar
(`LOSS_AGGREGATIONS`, `algo.loss_norm`), plus the KL term aggregated the same way. `policy_loss` is
the one function the trainer calls; the tests check it against each paper's formula by hand."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from .losses import kl_penalty, negative_pg_terms, normalise, pg_terms, positive_bc_terms

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

    def tokens(self, side: str) -> float:
        """The response tokens of one side: "pos", "neg" or "all"."""
        return {"pos": self.pos, "neg": self.neg, "all": self.all}[side]


# -- aggregation (algo.loss_norm) ------------------------------------------------------------------
# Each takes a per-token loss x [N, T], the mask of the tokens it covers (one side's rows, or all),
# the global counts and the side ("pos", "neg" or "all"), and returns that part of the batch's
# scalar loss. Every one divides a sum over rows by a global constant, so the parts of micro-batches
# and ranks add up to the whole batch's loss. The names are veRL's `loss_agg_mode`s.

def agg_token_mean(x, mask, counts: TokenCounts, side: str) -> torch.Tensor:
    """Every token of the batch weighs the same: sum / all response tokens (DAPO; TRL's "bnpo"
    and "dapo"; veRL "token-mean")."""
    return normalise((x * mask).sum(), counts.all)


def agg_side_token_mean(x, mask, counts: TokenCounts, side: str) -> torch.Tensor:
    """OREAL's reference: the positives' sum over the positives' tokens, the negatives' over the
    negatives' tokens; the KL term (side "all") over all tokens."""
    return normalise((x * mask).sum(), counts.tokens(side))


def agg_seq_mean_token_mean(x, mask, counts: TokenCounts, side: str) -> torch.Tensor:
    """Each response's mean over its own tokens, then the mean over responses (the GRPO paper,
    DeepSeekMath eq. 3; TRL's "grpo"; veRL "seq-mean-token-mean")."""
    per_row = (x * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return normalise(per_row.sum(), counts.seqs)


def agg_seq_mean_token_sum(x, mask, counts: TokenCounts, side: str) -> torch.Tensor:
    """Each response's token sum (its log-likelihood's gradient, REINFORCE on the sequence), then
    the mean over responses (veRL "seq-mean-token-sum")."""
    return normalise((x * mask).sum(), counts.seqs)


def agg_seq_mean_token_sum_norm(x, mask, counts: TokenCounts, side: str) -> torch.Tensor:
    """Each response's token sum over the constant max_new_tokens, then the mean over responses
    (Dr. GRPO; TRL's "dr_grpo"; veRL "seq-mean-token-sum-norm")."""
    return normalise((x * mask).sum(), counts.seqs * counts.max_new_tokens)


LOSS_AGGREGATIONS = {
    "token_mean": agg_token_mean,
    "side_token_mean": agg_side_token_mean,
    "seq_mean_token_mean": agg_seq_mean_token_mean,
    "seq_mean_token_sum": agg_seq_mean_token_sum,
    "seq_mean_token_sum_norm": agg_seq_mean_token_sum_norm,
}


# -- objectives (algo.objective) -------------------------------------------------------------------
# Each takes (logp, positive, adv, weights, cfg) and returns the [N, T] loss of every token;
# `policy_loss` aggregates it over the positives' and the negatives' rows and adds the KL term.

def oreal_objective(logp, positive, adv, weights, cfg: "AlgoConfig") -> torch.Tensor:
    """OREAL: lambda+ * w * -log pi (* A) on the positives' tokens, -lambda- * w * A * ratio on the
    negatives'."""
    pos = positive_bc_terms(logp, weights, adv, cfg.lambda_pos, cfg.pos_mult_adv)
    neg = negative_pg_terms(logp, logp.detach(), weights, adv, cfg.lambda_neg)
    return torch.where(positive[:, None], pos, neg)


def pg_objective(logp, positive, adv, weights, cfg: "AlgoConfig") -> torch.Tensor:
    """The baselines: -w * A * ratio on every token (reported split by side)."""
    return pg_terms(logp, logp.detach(), adv, weights)


OBJECTIVES = {"bc": oreal_objective, "pg": pg_objective}


@dataclass
class PolicyLoss:
    loss: torch.Tensor  # pos + neg + kl_coef * kl: what backward() runs on
    pos: torch.Tensor  # the positives' term, aggregated
    neg: torch.Tensor  # the negatives' term, aggregated
    kl: torch.Tensor  # the KL term, aggregated, before kl_coef
    kl_sum: torch.Tensor  # detached sum of the per-token KL estimate (a metric)


def policy_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor,
                adv: torch.Tensor, weights: torch.Tensor, counts: TokenCounts, cfg: "AlgoConfig") -> PolicyLoss:
    """OREAL.md step 7 on one micro-batch: the objective `cfg.objective` names (OBJECTIVES) plus
    kl_coef * KL(pi || ref), both aggregated by `cfg.loss_norm` (LOSS_AGGREGATIONS).

    logp, ref_logp, mask, weights: [N, T] (mask 1 on response tokens); positive, adv: [N].
    """
    agg = LOSS_AGGREGATIONS[cfg.loss_norm]
    per_token = OBJECTIVES[cfg.objective](logp, positive, adv, weights, cfg)
    pos = agg(per_token, mask * positive[:, None], counts, "pos")
    neg = agg(per_token, mask * (~positive)[:, None], counts, "neg")
    kl_tok = kl_penalty(logp, ref_logp, cfg.kl_kind)
    kl = agg(kl_tok, mask, counts, "all")
    return PolicyLoss(pos + neg + cfg.kl_coef * kl, pos, neg, kl, (kl_tok.detach() * mask).sum())
