"""OREAL's math as pure functions on tensors (no I/O, no models), with the registries and
presets that name them.

Shapes: B questions, K samples each; N selected responses, T response tokens (right-padded,
`mask` is 1 on real tokens). Rewards are 1.0 (correct) / 0.0 (incorrect).
"""
from .advantages import ADVANTAGE_ESTIMATORS, adv_drgrpo, adv_grpo, adv_none, adv_rloo, group_advantages, register_advantage
from .config import ALGORITHMS, LOSS_NORMS, OPTIONS, OBJECTIVES, AlgoConfig, resolve_algo
from .losses import (KL_ESTIMATORS, engine_ratio, kl_penalty, truncated_is_weights, negative_pg_loss, negative_pg_terms,
                     normalise, pg_loss, pg_terms, positive_bc_loss, positive_bc_terms, ppo_clip_ratio, ppo_clipped,
                     token_entropy, token_logprobs)
from .aggregation import register_aggregation
from .inputs import LossInputs, TokenCounts
from .objective import LOSS_AGGREGATIONS, LOSS_SUMS, PolicyLoss, TokenLoss, policy_loss, register_objective
from .registry import Registry
from .selection import OVERLONG, SELECTIONS, Selection, pass_rate_filter, select, select_pairs
from .credit import (AUTO_INIT, TOKEN_WEIGHTS, auto_calibration, calibration_sums, masked_mean, pair_ranking, credit_correct, credit_correct_count, running_correctness,
                       token_importance_weights, credit_sequence_loss)

__all__ = ["ADVANTAGE_ESTIMATORS", "AUTO_INIT", "auto_calibration", "calibration_sums", "ALGORITHMS", "KL_ESTIMATORS", "LOSS_AGGREGATIONS", "LOSS_NORMS", "OPTIONS", "OBJECTIVES",
           "LOSS_SUMS", "OVERLONG", "LossInputs", "Registry", "TokenLoss", "ppo_clip_ratio", "ppo_clipped",
           "register_advantage", "register_aggregation", "register_objective",
           "SELECTIONS", "TOKEN_WEIGHTS", "AlgoConfig", "PolicyLoss", "TokenCounts", "adv_drgrpo", "adv_grpo",
           "adv_none", "adv_rloo", "engine_ratio", "truncated_is_weights", "group_advantages", "kl_penalty", "masked_mean", "negative_pg_loss", "negative_pg_terms",
           "normalise", "pair_ranking", "pass_rate_filter", "pg_loss", "pg_terms", "policy_loss", "positive_bc_loss", "positive_bc_terms", "resolve_algo",
           "credit_correct", "credit_correct_count", "running_correctness", "select", "select_pairs", "Selection", "token_entropy",
           "token_importance_weights", "token_logprobs", "credit_sequence_loss"]
