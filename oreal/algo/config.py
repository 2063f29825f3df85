"""The algorithm's settings, the registry of allowed values for each, and the presets.

`AlgoConfig.validate` iterates `OPTIONS`, the same registries the pure functions dispatch on, so
an allowed value is listed once. A preset in `ALGORITHMS` fills several fields at once; the keys a
user set win over it: the fields a preset may set default to None, filled on construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..config import ConfigError, setting
from .advantages import ADVANTAGE_ESTIMATORS
from .losses import KL_ESTIMATORS
from .selection import SELECTIONS
from .token_rm import TOKEN_WEIGHTS, WEIGHTED_SIDES

POSITIVE_LOSSES = {
    "bc": "behaviour cloning on positives, shaped policy gradient on negatives (OREAL)",
    "pg": "the same policy-gradient term on positives and negatives (the baselines)",
}
LOSS_NORMS = {
    "tokens": "divide by the batch's global token counts",
    "constant": "divide by sequences x max_new_tokens (Dr. GRPO)",
}
CREDIT_SOURCES = {
    "rm": "the paper's token RM: the policy's backbone with a token head, w_t from hidden states",
    "logprob": "w_t = a log pi_phi(y_t) + b, pi_phi a trainable copy of the policy (oreal.models.credit)",
    "surprise": "w_t = a log pi_ref(y_t) + b, the frozen policy; only a and b learn",
}
NO_TOKEN_WEIGHTS = "none"  # every token weighs 1; no token RM is loaded

OPTIONS = {
    "advantage": ADVANTAGE_ESTIMATORS,
    "positive_loss": POSITIVE_LOSSES,
    "token_weights": {NO_TOKEN_WEIGHTS: None, **TOKEN_WEIGHTS},
    "select": SELECTIONS,
    "kl_kind": KL_ESTIMATORS,
    "loss_norm": LOSS_NORMS,
    "credit": CREDIT_SOURCES,
    "token_weights_on": WEIGHTED_SIDES,
}


# What a preset may set (None in AlgoConfig: "the preset's"), and the values of the `oreal` preset.
PRESET_DEFAULTS = dict(advantage="rloo", positive_loss="bc", pos_mult_adv=True, token_weights="threshold",
                       select="pair", filter=True, loss_norm="tokens", actor_freeze_steps=10)
_FROM_PRESET = " (unset: the preset's)"


@dataclass
class AlgoConfig:
    """OREAL's settings. `name` picks a preset (ALGORITHMS) that fills every field left unset
    (None); a field you set wins over the preset. Validated on construction, however built."""
    name: str = setting("oreal", "preset: " + " | ".join(["oreal", "reinforce", "rloo", "grpo", "drgrpo",
                                                           "ladder_shaping", "ladder_bc", "ladder_token"]))
    advantage: str | None = setting(None, "group advantage: rloo | grpo | drgrpo | none" + _FROM_PRESET)
    positive_loss: str | None = setting(None, "bc: behaviour cloning on positives; pg: the negatives' policy "
                                              "gradient on positives too" + _FROM_PRESET)
    pos_mult_adv: bool | None = setting(None, "multiply the positives' BC term by the advantage" + _FROM_PRESET)
    lambda_pos: float = setting(1.0, "weight of the positives' term (lambda+)")
    lambda_neg: float = setting(0.5, "weight of the negatives' term (lambda-)")
    token_weights: str | None = setting(None, "token importance weights: threshold | topk | none (none loads no "
                                              "token RM)" + _FROM_PRESET)
    credit: str = setting("rm", "the token RM behind the weights: rm (token head, the paper's) | logprob | surprise")
    credit_calib_lr: float = setting(0.05, "logprob / surprise: learning rate of the calibration a, b")
    credit_init: list[float] = setting(help="logprob / surprise: a, b of w_t = a log pi(y_t) + b at the start",
                                       factory=lambda: [1.0, 0.0])
    tau: float = setting(0.5, "threshold of the token weights on the running correctness c_t")
    token_weights_on: str = setting("both", "both (the paper) | negatives: positives are cloned with weight 1")
    weights_after_rm_step: bool = setting(False, "token weights from the token RM after its step on this batch "
                                                 "(hindsight) instead of before it, as the reference does")
    topk_ratio: float = setting(0.2, "topk: share of tokens kept")
    select: str | None = setting(None, "responses in the loss: pair (one right, one wrong per question) | all"
                                 + _FROM_PRESET)
    filter: bool | None = setting(None, "drop questions with pass rate 0 or 1" + _FROM_PRESET)
    kl_coef: float = setting(0.01, "beta of the KL term to the reference policy")
    kl_kind: str = setting("k3", "KL estimator: k1 | k3 | mse")
    loss_norm: str | None = setting(None, "pg losses: tokens (global token counts) | constant (sequences x "
                                          "max_new_tokens, Dr. GRPO)" + _FROM_PRESET)
    actor_freeze_steps: int | None = setting(None, "steps at the start where only the token RM learns"
                                             + _FROM_PRESET)
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
    def uses_token_rm(self) -> bool:
        return self.token_weights != NO_TOKEN_WEIGHTS

    def validate(self):
        for key, allowed in OPTIONS.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"algo.{key}: {getattr(self, key)!r} is not one of {sorted(allowed)}")
        if self.name not in ALGORITHMS:
            raise ConfigError(f"algo.name: {self.name!r} is not one of {sorted(ALGORITHMS)}")
        if self.positive_loss == "bc" and self.loss_norm != "tokens":
            raise ConfigError(f"algo.loss_norm: {self.loss_norm!r} applies to positive_loss=pg only; behaviour "
                              f"cloning divides by the positives' and negatives' token counts")
        if self.tis_cap < 0:
            raise ConfigError("algo.tis_cap: must be >= 0 (0: off)")
        if self.actor_freeze_steps < 0:
            raise ConfigError("algo.actor_freeze_steps: must be at least 0")


_PG_ALL = dict(positive_loss="pg", token_weights="none", select="all", pos_mult_adv=False)
# Presets: the paper's ablation ladder and the usual baselines, all in one loop.
ALGORITHMS: dict[str, dict] = {
    "oreal": {},
    "reinforce": dict(_PG_ALL, advantage="none", filter=False, actor_freeze_steps=0),
    "ladder_shaping": dict(_PG_ALL, advantage="rloo", actor_freeze_steps=0),
    "ladder_bc": dict(advantage="rloo", positive_loss="bc", token_weights="none", select="all",
                      actor_freeze_steps=0),
    "ladder_token": dict(advantage="rloo", positive_loss="bc", token_weights="threshold", select="all"),
    "rloo": dict(_PG_ALL, advantage="rloo", actor_freeze_steps=0),
    "grpo": dict(_PG_ALL, advantage="grpo", actor_freeze_steps=0),
    "drgrpo": dict(_PG_ALL, advantage="drgrpo", loss_norm="constant", actor_freeze_steps=0),
}


def resolve_algo(cfg: AlgoConfig, explicit: set[str]) -> AlgoConfig:
    """`cfg` with the preset named by `cfg.name` applied again over every key not in `explicit`
    (a config whose name changed after it was built)."""
    preset = {k: v for k, v in {**PRESET_DEFAULTS, **ALGORITHMS[cfg.name]}.items() if k not in explicit}
    return replace(cfg, **preset)
