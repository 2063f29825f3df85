"""How the [N, T] per-token losses of a micro-batch become its share of the batch's scalar loss
(`algo.loss_norm`): the registry `LOSS_AGGREGATIONS`, each aggregation registered where it is
defined (`@register_aggregation`). The names are veRL's `loss_agg_mode`s."""
from __future__ import annotations

import torch

from .inputs import TokenCounts
from .losses import normalise
from .registry import Registry

LOSS_AGGREGATIONS = Registry("aggregation")
register_aggregation = LOSS_AGGREGATIONS.register


# Each takes a per-token loss x [N, T], the mask of the tokens it covers (one side's rows, or all),
# the global counts and the side ("pos", "neg" or "all"), and returns that part of the batch's
# scalar loss. Every one divides a sum over rows by a global constant, so the parts of micro-batches
# and ranks add up to the whole batch's loss.

@register_aggregation("token_mean", help="DAPO: every token of the batch weighs the same")
def agg_token_mean(x, mask, counts: TokenCounts, side: str) -> torch.Tensor:
    """Every token of the batch weighs the same: sum / all response tokens (DAPO; TRL's "bnpo"
    and "dapo"; veRL "token-mean")."""
    return normalise((x * mask).sum(), counts.all)


@register_aggregation("side_token_mean", help="OREAL's reference: each side over its own tokens")
def agg_side_token_mean(x, mask, counts: TokenCounts, side: str) -> torch.Tensor:
    """OREAL's reference: the positives' sum over the positives' tokens, the negatives' over the
    negatives' tokens; the KL term (side "all") over all tokens."""
    return normalise((x * mask).sum(), counts.tokens(side))


@register_aggregation("seq_mean_token_mean", help="GRPO: each response its mean, then the mean over responses")
def agg_seq_mean_token_mean(x, mask, counts: TokenCounts, side: str) -> torch.Tensor:
    """Each response's mean over its own tokens, then the mean over responses (the GRPO paper,
    DeepSeekMath eq. 3; TRL's "grpo"; veRL "seq-mean-token-mean")."""
    per_row = (x * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return normalise(per_row.sum(), counts.seqs)


@register_aggregation("seq_mean_token_sum", help="RLOO: each response its sum, then the mean over responses")
def agg_seq_mean_token_sum(x, mask, counts: TokenCounts, side: str) -> torch.Tensor:
    """Each response's token sum (its log-likelihood's gradient, REINFORCE on the sequence), then
    the mean over responses (veRL "seq-mean-token-sum")."""
    return normalise((x * mask).sum(), counts.seqs)


@register_aggregation("seq_mean_token_sum_norm", help="Dr. GRPO: each response its sum over max_new_tokens, then the mean")
def agg_seq_mean_token_sum_norm(x, mask, counts: TokenCounts, side: str) -> torch.Tensor:
    """Each response's token sum over the constant max_new_tokens, then the mean over responses
    (Dr. GRPO; TRL's "dr_grpo"; veRL "seq-mean-token-sum-norm")."""
    return normalise((x * mask).sum(), counts.seqs * counts.max_new_tokens)
