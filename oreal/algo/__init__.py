"""OREAL's math (advantages, filters, selection, token weights, losses) as pure functions."""
from .core import (ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, adv_drgrpo, adv_grpo, adv_none, adv_rloo,
                   group_advantages, kl_penalty, masked_mean, negative_pg_loss, normalise,
                   pass_rate_filter, pg_loss, positive_bc_loss, running_correctness, select_pairs,
                   token_importance_weights, token_logprobs, token_rm_sequence_loss)

__all__ = ["ADVANTAGE_ESTIMATORS", "KL_ESTIMATORS", "adv_drgrpo", "adv_grpo", "adv_none", "adv_rloo",
           "group_advantages", "kl_penalty", "masked_mean", "negative_pg_loss", "normalise",
           "pass_rate_filter", "pg_loss", "positive_bc_loss", "running_correctness", "select_pairs",
           "token_importance_weights", "token_logprobs", "token_rm_sequence_loss"]
