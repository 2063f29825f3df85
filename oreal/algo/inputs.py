"""What a policy objective sees of one micro-batch: one frozen record, `LossInputs`, and the global
counts its aggregation divides by, `TokenCounts`.

Every objective is a function of this record and the `AlgoConfig` (`oreal.algo.objective`), so an
objective that needs another tensor gets a field here, not a new argument in every caller. The
trainer builds the record per micro-batch; with one update per batch `old_logp` is `logp.detach()`
(`LossInputs.on_policy`), with several (`algo.updates_per_batch`, `algo.mini_batches`) it is the
policy's log-probs before the batch's first optimiser step, kept for every update of that batch
(`oreal.training.policy`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


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


@dataclass(frozen=True)
class LossInputs:
    """One micro-batch as the loss sees it: N responses, right-padded to T tokens.

    Only `logp` carries a gradient; the others are data. `weights` are the token weights each
    token's loss is multiplied by (the credit model's, or ones); `policy_loss` multiplies them by
    the truncated importance weights when `algo.tis_cap` is set, before the objective sees them."""
    logp: torch.Tensor  # [N, T] log pi_theta(y_t) of the sampled tokens, with grad
    old_logp: torch.Tensor  # [N, T] log pi_old(y_t): the policy's before the batch's first step (no grad)
    ref_logp: torch.Tensor  # [N, T] log pi_ref(y_t) of the frozen reference
    engine_logp: torch.Tensor | None  # [N, T] the engine's log-probs of the sampled tokens, or None
    mask: torch.Tensor  # [N, T] 1 on the response tokens in the loss
    positive: torch.Tensor  # [N] bool: the response is correct
    adv: torch.Tensor  # [N] its advantage
    weights: torch.Tensor  # [N, T] token weights
    counts: TokenCounts  # the whole batch's, for the aggregation

    @classmethod
    def on_policy(cls, logp, ref_logp, mask, positive, adv, weights, counts,
                  engine_logp: torch.Tensor | None = None) -> "LossInputs":
        """The record of one update per batch: pi_old is the policy itself (old_logp = logp.detach(),
        so every ratio is 1 in value and its gradient is that of log pi)."""
        return cls(logp=logp, old_logp=logp.detach(), ref_logp=ref_logp, engine_logp=engine_logp, mask=mask,
                   positive=positive, adv=adv, weights=weights, counts=counts)

    def log_ratio(self) -> torch.Tensor:
        """[N, T] log pi / pi_old per token (gradient through log pi only)."""
        return self.logp - self.old_logp.detach()

    def ratio(self) -> torch.Tensor:
        """[N, T] pi / pi_old per token (gradient through log pi only)."""
        return torch.exp(self.log_ratio())

    def with_weights(self, weights: torch.Tensor) -> "LossInputs":
        return replace(self, weights=weights)

    def rows(self, sl: slice) -> "LossInputs":
        """The record of rows `sl` (a micro-batch of this one), with the same global counts."""
        cut = {k: getattr(self, k)[sl] for k in ("logp", "old_logp", "ref_logp", "mask", "positive", "adv", "weights")}
        return replace(self, engine_logp=None if self.engine_logp is None else self.engine_logp[sl], **cut)
