"""The per-token terms of the policy loss. `*_terms` give a loss per token ([N, T]); `*_loss` their
sum over a mask. `oreal.algo.objective` divides sums by *global* counts (`normalise`, the
aggregations of `algo.loss_norm`), so micro-batches with gradient accumulation (and ranks under
data parallelism) give exactly the update of one big batch."""
from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position; logits [N, T, V], targets [N, T]."""
    return torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor, max_elements: int = 2**26) -> torch.Tensor:
    """[N, T] entropy of the policy's distribution at every position (a metric; no gradient),
    a few rows at a time so that the float32 copy of [rows, T, V] stays under `max_elements`."""
    out = torch.empty(logits.shape[:-1], dtype=torch.float32, device=logits.device)
    rows = max(1, max_elements // max(1, logits[0].numel()))
    with torch.no_grad():
        for i in range(0, logits.size(0), rows):
            lsm = torch.log_softmax(logits[i:i + rows].float(), -1)
            out[i:i + rows] = -(lsm.exp() * lsm).sum(-1)
    return out


def positive_bc_terms(logp: torch.Tensor, weights: torch.Tensor, adv: torch.Tensor, lambda_pos: float = 1.0,
                      pos_mult_adv: bool = True) -> torch.Tensor:
    """[N, T] behaviour cloning on positives, per token: lambda+ * w_t * (-log pi(y_t)) [* A]."""
    scale = adv.view(-1, 1) if pos_mult_adv else 1.0
    return lambda_pos * weights * scale * (-logp)


def negative_pg_terms(logp: torch.Tensor, old_logp: torch.Tensor, weights: torch.Tensor, adv: torch.Tensor,
                      lambda_neg: float = 0.5, clip: tuple[float, float] | None = None) -> torch.Tensor:
    """[N, T] policy gradient on negatives, per token: -lambda- * w_t * A * pi/pi_old (the ratio is 1
    in value on-policy; its gradient is that of log pi, i.e. REINFORCE with the shaped A). `clip`
    (eps_low, eps_high): PPO's clipped ratio (`ppo_clip_ratio`), for several updates per batch."""
    ratio = torch.exp(logp - old_logp.detach())
    if clip is not None:
        ratio = ppo_clip_ratio(ratio, adv, *clip)[0]
    return -lambda_neg * weights * adv.view(-1, 1) * ratio


def ppo_clipped(ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """[N, T] bool: the tokens where PPO's surrogate min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)
    takes the clipped branch and the clip binds (A > 0 and r > 1 + eps_high, or A < 0 and
    r < 1 - eps_low): there it is constant in the policy. `adv` [N] (one per response) or [N, T]."""
    a, r = (adv.view(-1, 1) if adv.dim() == 1 else adv), ratio.detach()
    return ((a > 0) & (r > 1 + clip_high)) | ((a < 0) & (r < 1 - clip_low))


def ppo_clip_ratio(ratio: torch.Tensor, adv: torch.Tensor, clip_low: float,
                   clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(r', clipped): r' is clip(r) (detached) where `ppo_clipped`, r elsewhere, so that A * r' is
    min(r A, clip(r) A) in value and in gradient (PPO, Schulman et al. 2017, eq. 7). Where no token
    is clipped r' is r itself, bit for bit (`torch.where` passes values and gradients through); at
    a bound exactly (r = 1 + eps_high) the gradient is the unclipped one."""
    clipped = ppo_clipped(ratio, adv, clip_low, clip_high)
    return torch.where(clipped, ratio.detach().clamp(1 - clip_low, 1 + clip_high), ratio), clipped


def pg_terms(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """[N, T] the baselines' term on every sample, per token: -w_t * A * pi/pi_old."""
    w = weights if weights is not None else torch.ones_like(logp)
    return -w * adv.view(-1, 1) * torch.exp(logp - old_logp.detach())


def positive_bc_loss(logp: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor,
                     adv: torch.Tensor, lambda_pos: float = 1.0,
                     pos_mult_adv: bool = True) -> torch.Tensor:
    """`positive_bc_terms` summed over the tokens of `mask`."""
    return (positive_bc_terms(logp, weights, adv, lambda_pos, pos_mult_adv) * mask).sum()


def negative_pg_loss(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                     weights: torch.Tensor, adv: torch.Tensor,
                     lambda_neg: float = 0.5) -> torch.Tensor:
    """`negative_pg_terms` summed over the tokens of `mask`."""
    return (negative_pg_terms(logp, old_logp, weights, adv, lambda_neg) * mask).sum()


def pg_loss(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """`pg_terms` summed over the tokens of `mask`."""
    return (pg_terms(logp, old_logp, adv, weights) * mask).sum()


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def kl_mse(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    d = ref_logp - logp
    return 0.5 * d * d


KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3, "mse": kl_mse}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL(pi || ref) estimate from sampled tokens: k1, k3 or mse."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; choose from {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logp, ref_logp)


def normalise(total: torch.Tensor, count: int | float) -> torch.Tensor:
    """Divide a token sum by a *global* token count (never by a micro-batch's own count)."""
    return total / max(float(count), 1.0)


def engine_ratio(logp: torch.Tensor, engine_logp: torch.Tensor) -> torch.Tensor:
    """[N, T] pi_trainer(y_t) / pi_engine(y_t) of each sampled token (detached): 1 when the engine
    that sampled holds the trainer's weights; apart by the kernels' round-off otherwise."""
    return torch.exp(logp.detach().float() - engine_logp.float())


def truncated_is_weights(logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor,
                         cap: float) -> torch.Tensor:
    """[N, T] truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly
    brings you off-policy RL training"): each token's loss times min(pi_trainer / pi_engine, cap),
    correcting for an engine whose distribution differs from the trainer's; 0 off the mask."""
    return engine_ratio(logp, engine_logp).clamp(max=cap) * mask
