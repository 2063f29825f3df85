"""The algorithm's settings, the registry of allowed values for each, and the presets.

`AlgoConfig.validate` iterates `OPTIONS`, the same registries the pure functions dispatch on, so
an allowed value is listed once. A preset in `ALGORITHMS` fills several fields at once; the keys a
user set explicitly win over it (`resolve_algo`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..config import ConfigError
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


@dataclass
class AlgoConfig:
    name: str = "oreal"  # a preset from ALGORITHMS fills the fields below; explicit keys win
    advantage: str = "rloo"  # rloo | grpo | drgrpo | none
    positive_loss: str = "bc"  # bc: behaviour cloning on positives; pg: the same PG term as negatives
    pos_mult_adv: bool = True
    lambda_pos: float = 1.0
    lambda_neg: float = 0.5
    token_weights: str = "threshold"  # none | threshold | topk (needs the token RM)
    credit: str = "rm"  # the token RM behind the token weights: rm (the paper's) | logprob | surprise
    credit_calib_lr: float = 0.05  # logprob / surprise: learning rate of the calibration a, b
    credit_init: list[float] = field(default_factory=lambda: [1.0, 0.0])  # logprob / surprise: a, b at start
    tau: float = 0.5
    token_weights_on: str = "both"  # both (the paper) | negatives: positives are cloned with weight 1
    # token weights from the token RM after its step on this batch's outcomes (hindsight) instead of
    # before it, as the reference does; measured in docs/benchmarks.md (credit), off in the demo
    weights_after_rm_step: bool = False
    topk_ratio: float = 0.2
    select: str = "pair"  # pair | all
    filter: bool = True  # drop questions with pass rate 0 or 1
    kl_coef: float = 0.01
    kl_kind: str = "k3"  # k1 | k3 | mse
    loss_norm: str = "tokens"  # tokens: global token counts; constant: sequences x max_new_tokens
    actor_freeze_steps: int = 10

    @property
    def uses_token_rm(self) -> bool:
        return self.token_weights != NO_TOKEN_WEIGHTS

    def validate(self):
        for key, allowed in OPTIONS.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"algo.{key}: {getattr(self, key)!r} is not one of {sorted(allowed)}")
        if self.name not in ALGORITHMS:
            raise ConfigError(f"algo.name: {self.name!r} is not one of {sorted(ALGORITHMS)}")


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
    """Apply the preset named by `cfg.name`, keeping the keys the user set explicitly."""
    preset = {k: v for k, v in ALGORITHMS[cfg.name].items() if k not in explicit}
    return replace(cfg, **preset)
