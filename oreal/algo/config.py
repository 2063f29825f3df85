"""The algorithm's settings, the registry of allowed values for each, and the presets.

`AlgoConfig.validate` iterates `OPTIONS`, the same registries the pure functions dispatch on, so
an allowed value is listed once. A preset in `ALGORITHMS` fills several fields at once; the keys a
user set win over it: the fields a preset may set default to None, filled on construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from collections.abc import Mapping

from ..config import ConfigError, setting
from .advantages import ADVANTAGE_ESTIMATORS
from .losses import KL_ESTIMATORS
from .objective import LOSS_AGGREGATIONS, OBJECTIVES
from .selection import OVERLONG, SELECTIONS
from .credit import TOKEN_WEIGHTS, WEIGHTED_SIDES

LOSS_NORMS = LOSS_AGGREGATIONS
class _CreditModels(Mapping):
    """The names of `oreal.models.credit.CREDIT_MODELS` (the one registry of credit models), read
    on first use so that this module stays free of model code."""

    def _names(self):
        from ..models.credit import CREDIT_MODELS

        return CREDIT_MODELS

    def __getitem__(self, key):
        return self._names()[key]

    def __iter__(self):
        return iter(self._names())

    def __len__(self):
        return len(self._names())


NO_TOKEN_WEIGHTS = "none"  # every token weighs 1; no credit model is loaded

OPTIONS = {
    "advantage": ADVANTAGE_ESTIMATORS,
    "objective": OBJECTIVES,
    "token_weights": {NO_TOKEN_WEIGHTS: None, **TOKEN_WEIGHTS},
    "select": SELECTIONS,
    "kl_kind": KL_ESTIMATORS,
    "loss_norm": LOSS_NORMS,
    "credit": _CreditModels(),
    "token_weights_on": WEIGHTED_SIDES,
    "overlong": OVERLONG,
}


# What a preset may set (None in AlgoConfig: "the preset's"), and the values of the `oreal` preset.
PRESET_DEFAULTS = dict(advantage="rloo", objective="bc", pos_mult_adv=True, token_weights="threshold",
                       select="pair", filter=True, loss_norm="side_token_mean", actor_freeze_steps=10,
                       kl_coef=0.01, clip_low=0.2, clip_high=0.2, overlong="incorrect", refill_rounds=0)
_FROM_PRESET = " (unset: the preset's)"

_PG_ALL = dict(objective="pg", token_weights="none", select="all", pos_mult_adv=False, actor_freeze_steps=0)
# Presets: the paper's ablation ladder and the usual baselines, all in one loop; docs/algorithms.md
# has each one's paper, and tests/test_algo.py computes each one's loss from that paper's formula.
ALGORITHMS: dict[str, dict] = {
    "oreal": {},
    # OREAL's Table 2, a rung at a time on the reference's code: its filter, token-mean policy terms
    "reinforce": dict(_PG_ALL, advantage="none", filter=False, loss_norm="token_mean"),
    "ladder_shaping": dict(_PG_ALL, advantage="rloo", loss_norm="token_mean"),
    "ladder_bc": dict(advantage="rloo", objective="bc", token_weights="none", select="all",
                      actor_freeze_steps=0),
    "ladder_token": dict(advantage="rloo", objective="bc", token_weights="threshold", select="all"),
    # the baselines as their papers define them: every group kept (zero advantage still counts in
    # the normaliser and the KL), each paper's aggregation
    "rloo": dict(_PG_ALL, advantage="rloo", filter=False, loss_norm="seq_mean_token_sum"),  # Ahmadian et al. 2024
    # GRPO and Dr. GRPO are PPO's clipped surrogate (eps 0.2, TRL's default; one update per batch
    # leaves it unclipped, bit for bit the `pg` they took before several updates existed)
    "grpo": dict(_PG_ALL, objective="ppo_clip", advantage="grpo", filter=False,
                 loss_norm="seq_mean_token_mean"),  # DeepSeekMath eq. 3
    "drgrpo": dict(_PG_ALL, objective="ppo_clip", advantage="drgrpo", filter=False,
                   loss_norm="seq_mean_token_sum_norm"),  # Liu et al. 2025
    # ratio objectives (their clips bind from the second update on a batch), no KL term in their papers
    "dapo": dict(_PG_ALL, objective="ppo_clip", advantage="grpo", filter=True, loss_norm="token_mean", kl_coef=0.0,
                 clip_low=0.2, clip_high=0.28, overlong="mask", refill_rounds=3),  # Yu et al. 2025, arXiv 2503.14476
    "gspo": dict(_PG_ALL, objective="gspo", advantage="grpo", filter=False, loss_norm="seq_mean_token_mean",
                 kl_coef=0.0, clip_low=3e-4, clip_high=4e-4),  # Zheng et al. 2025, arXiv 2507.18071
    # MiniMax-M1 (arXiv 2506.13585): no lower bound (clip_low 1: the weight's floor is 0); its eps_high is
    # not published, clip_high 4 is ScaleRL's cap of 5 (docs/algorithms.md)
    "cispo": dict(_PG_ALL, objective="cispo", advantage="grpo", filter=False, loss_norm="token_mean", kl_coef=0.0,
                  clip_low=1.0, clip_high=4.0),
}


@dataclass
class AlgoConfig:
    """OREAL's settings. `name` picks a preset (ALGORITHMS) that fills every field left unset
    (None); a field you set wins over the preset. Validated on construction, however built."""
    name: str = setting("oreal", "preset: " + " | ".join(ALGORITHMS))
    advantage: str | None = setting(None, "group advantage: " + ADVANTAGE_ESTIMATORS.describe() + _FROM_PRESET)
    adv_eps: float = setting(1e-4, "grpo: floor added to the group's standard deviation (TRL's 1e-4; the reference "
                                   "takes 1e-8)")
    objective: str | None = setting(None, "the policy objective (r = pi / pi_old): " + OBJECTIVES.describe()
                                    + _FROM_PRESET)
    clip_low: float | None = setting(None, "ratio objectives: the ratio's lower clip is 1 - clip_low (0 to 1)"
                                     + _FROM_PRESET)
    clip_high: float | None = setting(None, "ratio objectives: the ratio's upper clip is 1 + clip_high (DAPO's "
                                      "clip-higher: 0.28)" + _FROM_PRESET)
    pos_mult_adv: bool | None = setting(None, "multiply the positives' BC term by the advantage" + _FROM_PRESET)
    lambda_pos: float = setting(1.0, "weight of the positives' term (lambda+)")
    lambda_neg: float = setting(0.5, "weight of the negatives' term (lambda-)")
    token_weights: str | None = setting(None, "token importance weights: threshold | topk | topk_minmax (the "
                                              "reference's topk_rescale) | none (none loads no "
                                              "credit model)" + _FROM_PRESET)
    credit: str = setting("token_head", "the credit model behind the token weights: token_head (the paper's "
                                        "token RM) | logprob | surprise")
    credit_calib_lr: float = setting(0.05, "logprob / surprise: learning rate of the calibration a, b")
    credit_init: list[float] | str = setting("auto", "logprob / surprise: a, b of w_t = a log pi(y_t) + b at "
                                             "the start, or auto: a = 1 and b from the first batch's log-probs, "
                                             "so that the scores straddle tau (at 1, 0 a large vocabulary's "
                                             "log-probs put every c_t near 0)")
    tau: float = setting(0.5, "threshold of the token weights on the running correctness c_t")
    token_weights_on: str = setting("both", "both (the paper) | negatives: positives are cloned with weight 1")
    weights_after_credit_step: bool = setting(False, "token weights from the credit model after its step on this batch "
                                                 "(hindsight) instead of before it, as the reference does")
    topk_ratio: float = setting(0.2, "topk / topk_minmax: share of tokens kept (the reference's default: 0.5)")
    select: str | None = setting(None, "responses in the loss: pair (one right, one wrong per question) | all"
                                 + _FROM_PRESET)
    filter: bool | None = setting(None, "drop questions with pass rate 0 or 1" + _FROM_PRESET)
    refill_rounds: int | None = setting(None, "DAPO's dynamic sampling: while fewer than batch_questions questions "
                                              "pass the filter, draw and sample another batch_questions, at most "
                                              "this many extra rounds; the step keeps the first batch_questions "
                                              "that pass, in draw order (0: off; needs filter=true; dapo: 3)"
                                              + _FROM_PRESET)
    kl_coef: float | None = setting(None, "beta of the KL term to the reference policy (0.01; dapo, gspo, cispo: "
                                          "0)" + _FROM_PRESET)
    kl_kind: str = setting("k3", "KL estimator: k1 | k3 | mse")
    loss_norm: str | None = setting(None, "how the per-token losses and the KL term become one number: "
                                    + LOSS_AGGREGATIONS.describe() + _FROM_PRESET)
    overlong: str | None = setting(None, "a response cut at max_new_tokens: incorrect (graded incorrect, in the "
                                         "loss) | mask (DAPO's overlong filtering: out of the loss and its "
                                         "normalisers)" + _FROM_PRESET)
    actor_freeze_steps: int | None = setting(None, "steps at the start where only the credit model learns"
                                             + _FROM_PRESET)
    updates_per_batch: int = setting(1, "optimiser passes over each batch (TRL's num_iterations, veRL's ppo_epochs); "
                                        "above 1 (or mini_batches above 1) pi_old is the policy before the batch's "
                                        "first step, so the ratio objectives' clips bind from the second step")
    mini_batches: int = setting(1, "each update pass splits the selected rows into this many mini-batches, one "
                                   "optimiser step each, normalised over its own rows (fewer rows than this: one "
                                   "mini-batch a row)")
    tis_cap: float = setting(0.0, "truncated importance sampling: weigh each token's loss by min(pi_trainer / "
                                  "pi_engine, cap) (0: off)")

    def __post_init__(self):
        if self.name not in ALGORITHMS:
            raise ConfigError(f"algo.name: {self.name!r} is not one of {sorted(ALGORITHMS)}")
        for key, value in {**PRESET_DEFAULTS, **ALGORITHMS[self.name]}.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.validate()

    @property
    def uses_credit(self) -> bool:
        return self.token_weights != NO_TOKEN_WEIGHTS

    def validate(self):
        for key, allowed in OPTIONS.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"algo.{key}: {getattr(self, key)!r} is not one of {sorted(allowed)}")
        if self.name not in ALGORITHMS:
            raise ConfigError(f"algo.name: {self.name!r} is not one of {sorted(ALGORITHMS)}")
        if isinstance(self.credit_init, str) and self.credit_init != "auto" or (
                not isinstance(self.credit_init, str) and len(self.credit_init) != 2):
            raise ConfigError(f"algo.credit_init: {self.credit_init!r}: auto, or a, b (e.g. [10, 1])")
        if not 0 <= self.clip_low <= 1 or self.clip_high < 0:
            raise ConfigError(f"algo.clip_low, algo.clip_high: {self.clip_low}, {self.clip_high}: the ratio is "
                              f"clipped to [1 - clip_low, 1 + clip_high], so 0 <= clip_low <= 1 and clip_high >= 0")
        if self.tis_cap < 0:
            raise ConfigError("algo.tis_cap: must be >= 0 (0: off)")
        if self.updates_per_batch < 1 or self.mini_batches < 1:
            raise ConfigError(f"algo.updates_per_batch, algo.mini_batches: {self.updates_per_batch}, "
                              f"{self.mini_batches}: each must be at least 1 (1, 1: one optimiser step a batch)")
        if self.actor_freeze_steps < 0:
            raise ConfigError("algo.actor_freeze_steps: must be at least 0")
        if self.refill_rounds < 0:
            raise ConfigError("algo.refill_rounds: must be at least 0 (0: off)")
        if self.refill_rounds and not self.filter:
            raise ConfigError(f"algo.refill_rounds={self.refill_rounds} replaces the questions the pass-rate filter "
                              f"drops, but algo.filter is off (preset {self.name!r} or your setting): every group is "
                              f"kept and nothing would be refilled; set algo.filter=true, or algo.refill_rounds=0")



def resolve_algo(cfg: AlgoConfig, explicit: set[str]) -> AlgoConfig:
    """`cfg` with the preset named by `cfg.name` applied again over every key not in `explicit`
    (a config whose name changed after it was built)."""
    preset = {k: v for k, v in {**PRESET_DEFAULTS, **ALGORITHMS[cfg.name]}.items() if k not in explicit}
    return replace(cfg, **preset)
