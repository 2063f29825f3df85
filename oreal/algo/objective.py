"""The policy objective of one micro-batch: a per-token loss (`OBJECTIVES`, `algo.objective`)
aggregated to a scalar (`LOSS_AGGREGATIONS`, `algo.loss_norm`), plus the KL term aggregated the
same way. `policy_loss(inputs, cfg)` is the one function the trainer calls; the tests check it
against each paper's formula by hand.

An objective is a function `(inputs: LossInputs, cfg: AlgoConfig) -> [N, T]` per-token loss (or a
`TokenLoss`, which also says which tokens it clipped), registered where it is defined:

    @register_objective("name", help="what `oreal config show` says of it")
    def my_objective(x, cfg):
        return -x.weights * x.adv.view(-1, 1) * x.ratio()

Ratios are pi / pi_old with pi_old the policy that sampled the batch (`x.old_logp`): with one
update per batch they are 1 in value and their gradient is that of log pi, and no clip binds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..errors import TrainingError
from .aggregation import LOSS_AGGREGATIONS
from .inputs import LossInputs, TokenCounts
from .losses import (engine_ratio, kl_penalty, negative_pg_terms, pg_terms, positive_bc_terms, ppo_clip_ratio,
                     ppo_clipped, truncated_is_weights)
from .registry import Registry

if TYPE_CHECKING:
    from .config import AlgoConfig

OBJECTIVES = Registry("objective")
register_objective = OBJECTIVES.register


@dataclass(frozen=True)
class TokenLoss:
    """What an objective returns when it has more to say than the [N, T] loss."""
    loss: torch.Tensor  # [N, T] per-token loss
    clipped: torch.Tensor | None = None  # [N, T] bool: tokens whose ratio the objective clipped (clip_frac)


@register_objective("bc", help="OREAL: behaviour cloning on positives, shaped policy gradient with PPO's "
                               "clipped r on negatives")
def oreal_objective(x: LossInputs, cfg: "AlgoConfig") -> TokenLoss:
    """OREAL: lambda+ * w * -log pi (* A) on the positives' tokens, -lambda- * w * A * r on the
    negatives', r = pi / pi_old clipped as PPO's with (clip_low, clip_high) (`ppo_clip_ratio`).

    Several updates per batch: the paper (one update) leaves the ratio open. The positives' term
    stays the paper's behaviour cloning, -log pi with no ratio (a maximum-likelihood term, as SFT
    takes several epochs on the same data); the negatives' policy gradient takes PPO's clipped
    ratio, so a negative whose probability already fell below (1 - clip_low) pi_old stops pushing.
    With pi_old = pi (one update) r is 1 and never clipped: the paper's loss, bit for bit."""
    clip = (cfg.clip_low, cfg.clip_high)
    pos = positive_bc_terms(x.logp, x.weights, x.adv, cfg.lambda_pos, cfg.pos_mult_adv)
    neg = negative_pg_terms(x.logp, x.old_logp, x.weights, x.adv, cfg.lambda_neg, clip)
    clipped = ppo_clipped(x.ratio().detach(), x.adv, *clip) & ~x.positive[:, None]
    return TokenLoss(torch.where(x.positive[:, None], pos, neg), clipped)


@register_objective("pg", help="the baselines' policy gradient on every response, -w * A * r, unclipped")
def pg_objective(x: LossInputs, cfg: "AlgoConfig") -> torch.Tensor:
    """The baselines: -w * A * r on every token, r = pi / pi_old unclipped (reported split by side)."""
    return pg_terms(x.logp, x.old_logp, x.adv, x.weights)


@register_objective("ppo_clip", help="PPO's clipped surrogate, -w * min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) "
                                     "per token")
def ppo_clip_objective(x: LossInputs, cfg: "AlgoConfig") -> TokenLoss:
    """PPO-clip per token (Schulman et al. 2017; DAPO's clip-higher with clip_high > clip_low):
    -w_t * min(r_t A, clip(r_t, 1 - clip_low, 1 + clip_high) A), r_t = pi(y_t) / pi_old(y_t).
    On-policy (r = 1) it is `pg`, bit for bit."""
    ratio, clipped = ppo_clip_ratio(x.ratio(), x.adv, cfg.clip_low, cfg.clip_high)
    return TokenLoss(-x.weights * x.adv.view(-1, 1) * ratio, clipped)


@register_objective("gspo", help="GSPO: one ratio per response, s = exp(mean of log r), clipped per response")
def gspo_objective(x: LossInputs, cfg: "AlgoConfig") -> TokenLoss:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071): the response's ratio s_i = exp((1/|y_i|)
    sum_t log pi(y_t) / pi_old(y_t)) and its loss -min(s_i A_i, clip(s_i, 1 - clip_low,
    1 + clip_high) A_i), the clip decided per response.

    Written in the paper's GSPO-token form: every token carries s_i,t = sg[s_i] *
    pi(y_t) / sg[pi(y_t)], s_i in value, gradient s_i * grad log pi(y_t), times w_t (1 without
    token weights). Under `seq_mean_token_mean` (the preset's) a response's tokens average to
    -min(s_i A_i, clip(s_i) A_i), and since all its tokens share A_i the gradient is GSPO's
    sequence-level one, -A_i grad s_i = -A_i s_i (1/|y_i|) sum_t grad log pi(y_t)."""
    s = torch.exp(((x.logp.detach() - x.old_logp) * x.mask).sum(-1) / x.mask.sum(-1).clamp(min=1.0))  # [N]
    s_token = s[:, None] * torch.exp(x.logp - x.logp.detach())  # s_i in value, s_i * grad log pi
    ratio, clipped = ppo_clip_ratio(s_token, x.adv, cfg.clip_low, cfg.clip_high)  # every token: s_i's decision
    return TokenLoss(-x.weights * x.adv.view(-1, 1) * ratio, clipped)


@register_objective("cispo", help="CISPO: -w * sg(clip(r, 1 - clip_low, 1 + clip_high)) * A * log pi")
def cispo_objective(x: LossInputs, cfg: "AlgoConfig") -> TokenLoss:
    """CISPO (MiniMax-M1, arXiv 2506.13585, eq. 4): -w_t * sg(clip(r_t, 1 - clip_low, 1 + clip_high))
    * A * log pi(y_t). The clip bounds the importance weight, never the gradient: every token keeps
    its REINFORCE gradient, weighted by the truncated ratio (`clipped`: the tokens truncated)."""
    r = x.ratio().detach()
    weight = r.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    clipped = (r > 1 + cfg.clip_high) | (r < 1 - cfg.clip_low)
    return TokenLoss(-x.weights * x.adv.view(-1, 1) * weight * x.logp, clipped)


# The per-micro-batch sums `policy_loss` returns for the step's metrics (the trainer adds them up).
LOSS_SUMS = ("loss_pos", "loss_neg", "loss_kl", "kl", "ratio_sum", "ratio_outside", "ratio_tokens",
             "tis_sum", "tis_capped", "tis_tokens", "clipped", "clip_tokens")


@dataclass
class PolicyLoss:
    loss: torch.Tensor  # pos + neg + kl_coef * kl: what backward() runs on
    pos: torch.Tensor  # the positives' term, aggregated
    neg: torch.Tensor  # the negatives' term, aggregated
    kl: torch.Tensor  # the KL term, aggregated, before kl_coef
    kl_sum: torch.Tensor  # detached sum of the per-token KL estimate (a metric)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # metric sums, keys of LOSS_SUMS
    ratio_max: torch.Tensor | None = None  # the largest pi_trainer / pi_engine on the mask (0 without)


def engine_correction(x: LossInputs, cap: float) -> tuple[LossInputs, dict[str, torch.Tensor], torch.Tensor]:
    """The engine's ratio pi_trainer / pi_engine of the sampled tokens as metrics (its sums
    ratio_*, and its largest on the mask), and with `cap` (`algo.tis_cap`) > 0 truncated importance
    sampling: the record whose token weights are times min(ratio, cap) (`truncated_is_weights`;
    sums tis_*). Without the engine's log-probs there is nothing to measure, and a cap is an error."""
    ratio_max = torch.zeros((), device=x.logp.device)
    if x.engine_logp is None:
        if cap:
            raise TrainingError("algo.tis_cap needs the engine's log-probs of the sampled tokens "
                                "(sampling.return_logprobs=true)")
        return x, {}, ratio_max
    ratio = engine_ratio(x.logp, x.engine_logp)
    on = x.mask.bool()
    sums = {"ratio_sum": (ratio * x.mask).sum(), "ratio_outside": (((ratio < 0.8) | (ratio > 1.25)) & on).sum(),
            "ratio_tokens": x.mask.sum()}
    ratio_max = ratio.masked_fill(~on, 0.0).max()
    if cap:
        tis = truncated_is_weights(x.logp, x.engine_logp, x.mask, cap)
        x = x.with_weights(x.weights * tis)
        sums.update(tis_sum=tis.sum(), tis_capped=(ratio.gt(cap) & on).sum(), tis_tokens=x.mask.sum())
    return x, sums, ratio_max


def policy_loss(x: LossInputs, cfg: "AlgoConfig") -> PolicyLoss:
    """OREAL.md step 7 on one micro-batch: the objective `cfg.objective` names (OBJECTIVES) plus
    kl_coef * KL(pi || ref), both aggregated by `cfg.loss_norm` (LOSS_AGGREGATIONS), after the
    engine's correction (`engine_correction`, `cfg.tis_cap`). Its `sums` are the micro-batch's
    metric sums (LOSS_SUMS): the loss's parts, the KL estimate, the engine's ratio and the clipping."""
    x, sums, ratio_max = engine_correction(x, cfg.tis_cap)
    agg = LOSS_AGGREGATIONS[cfg.loss_norm]
    out = OBJECTIVES[cfg.objective](x, cfg)
    per_token, clipped = (out, None) if torch.is_tensor(out) else (out.loss, out.clipped)
    pos = agg(per_token, x.mask * x.positive[:, None], x.counts, "pos")
    neg = agg(per_token, x.mask * (~x.positive)[:, None], x.counts, "neg")
    kl_tok = kl_penalty(x.logp, x.ref_logp, cfg.kl_kind)
    kl = agg(kl_tok, x.mask, x.counts, "all")
    kl_term = cfg.kl_coef * kl
    sums.update(loss_pos=pos, loss_neg=neg, loss_kl=kl_term, kl=(kl_tok.detach() * x.mask).sum())
    if clipped is not None:
        sums.update(clipped=(clipped & x.mask.bool()).sum(), clip_tokens=x.mask.sum())
    return PolicyLoss(pos + neg + kl_term, pos, neg, kl, sums["kl"], sums, ratio_max)


__all__ = ["LOSS_AGGREGATIONS", "LOSS_SUMS", "OBJECTIVES", "LossInputs", "PolicyLoss", "TokenCounts", "TokenLoss",
           "engine_correction", "policy_loss", "register_objective"]
