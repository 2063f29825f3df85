"""The loss's record (`LossInputs`) and the registries: every preset that was there before the
record gives the loss and gradient it gave, bit for bit."""
import itertools
import math

import pytest
import torch

from oreal.algo import (ADVANTAGE_ESTIMATORS, LOSS_AGGREGATIONS, OBJECTIVES, AlgoConfig, LossInputs, Registry,
                        TokenCounts, kl_penalty, policy_loss)

# every preset from before LossInputs: their loss must not move by a bit
_BEFORE = ["oreal", "reinforce", "ladder_shaping", "ladder_bc", "ladder_token", "rloo", "grpo", "drgrpo"]


def _todays_loss(logp, ref, mask, pos, adv, w, counts, cfg, engine=None):
    """The loss as the trainer computed it before LossInputs (truncated IS in the recipe, the
    objective on (logp, positive, adv, weights)), op for op from the formulas."""
    if cfg.tis_cap:
        w = w * (torch.exp(logp.detach().float() - engine.float()).clamp(max=cfg.tis_cap) * mask)
    ratio = torch.exp(logp - logp.detach())
    if cfg.objective == "bc":
        bc = cfg.lambda_pos * w * (adv.view(-1, 1) if cfg.pos_mult_adv else 1.0) * (-logp)
        per_token = torch.where(pos[:, None], bc, -cfg.lambda_neg * w * adv.view(-1, 1) * ratio)
    else:
        per_token = -w * adv.view(-1, 1) * ratio
    agg = LOSS_AGGREGATIONS[cfg.loss_norm]
    kl = agg(kl_penalty(logp, ref, cfg.kl_kind), mask, counts, "all")
    return agg(per_token, mask * pos[:, None], counts, "pos") + agg(per_token, mask * (~pos)[:, None], counts, "neg") \
        + cfg.kl_coef * kl


def _bits(t):
    return t.detach().view(torch.int32)


@pytest.mark.parametrize("preset,tis", list(itertools.product(_BEFORE, [0.0, 1.5])))
def test_every_earlier_preset_gives_todays_loss_and_gradient_bit_for_bit(preset, tis):
    g = torch.Generator().manual_seed(3)
    N, T, V = 6, 7, 9
    logits = torch.randn(N, T, V, generator=g, requires_grad=True)
    targets = torch.randint(V, (N, T), generator=g)
    ref = torch.log_softmax(torch.randn(N, T, V, generator=g), -1).gather(-1, targets[..., None]).squeeze(-1)
    mask = (torch.rand(N, T, generator=g) > 0.3).float()
    pos, adv, w = torch.rand(N, generator=g) > 0.5, torch.randn(N, generator=g), torch.rand(N, T, generator=g)
    counts = TokenCounts((mask * pos[:, None]).sum().item(), (mask * ~pos[:, None]).sum().item(), N, 16)
    for loss_norm in sorted(LOSS_AGGREGATIONS):
        cfg = AlgoConfig(name=preset, loss_norm=loss_norm, tis_cap=tis)
        lp = lambda: torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)  # noqa: E731
        engine = (lp().detach() + 0.3 * torch.randn(N, T, generator=g)) * mask
        before = _todays_loss(lp(), ref, mask, pos, adv, w, counts, cfg, engine)
        (g_before,) = torch.autograd.grad(before, logits)
        now = policy_loss(LossInputs.on_policy(lp(), ref, mask, pos, adv, w, counts, engine), cfg).loss
        (g_now,) = torch.autograd.grad(now, logits)
        assert torch.equal(_bits(now), _bits(before)), (loss_norm, now.item(), before.item())
        assert torch.equal(_bits(g_now), _bits(g_before)), loss_norm


# -- a ragged batch --------------------------------------------------------------------------------
def _batch(rows, adv, positive=None, dtype=torch.float64):
    """rows: per response, a list of (log pi, r = pi / pi_old) per token; right-padded (the padding
    gets log pi -3 and a ratio of 9, which must count nowhere). logp is a leaf."""
    T = max(len(r) for r in rows)
    logp = torch.full((len(rows), T), -3.0, dtype=dtype)
    old = logp - math.log(9.0)
    mask = torch.zeros(len(rows), T, dtype=dtype)
    for i, row in enumerate(rows):
        for t, (lp, r) in enumerate(row):
            logp[i, t], old[i, t], mask[i, t] = lp, lp - math.log(r), 1.0
    adv = torch.tensor(adv, dtype=dtype)
    positive = adv > 0 if positive is None else torch.tensor(positive)
    logp.requires_grad_(True)
    counts = TokenCounts((mask * positive[:, None]).sum().item(), (mask * ~positive[:, None]).sum().item(), len(rows), 8)
    # a reference unlike the policy: the presets' kl_coef 0 must keep it out of the loss
    return LossInputs(logp=logp, old_logp=old, ref_logp=logp.detach() - 0.7, engine_logp=None, mask=mask,
                      positive=positive, adv=adv, weights=torch.ones_like(mask), counts=counts)


# -- the registries ---------------------------------------------------------------------------------
def test_registries_name_each_piece_once_and_build_the_help_and_the_validation():
    from oreal.algo.config import OPTIONS

    assert list(OBJECTIVES) == ["bc", "pg"]
    assert OPTIONS["objective"] is OBJECTIVES and OPTIONS["advantage"] is ADVANTAGE_ESTIMATORS
    helps = {f.name: f.metadata["help"] for f in AlgoConfig.__dataclass_fields__.values()}
    for name in OBJECTIVES:
        assert f"{name} (" in helps["objective"]
    for name in ADVANTAGE_ESTIMATORS:
        assert f"{name} (" in helps["advantage"]
    for name in LOSS_AGGREGATIONS:
        assert f"{name} (" in helps["loss_norm"]
    for name in ("oreal", "grpo", "drgrpo"):
        assert name in helps["name"]
    reg = Registry("thing")
    reg.register("a", help="the first", flag=True)(len)
    assert reg["a"] is len and reg.prop("a", "flag") and reg.prop("a", "other", 3) == 3
    assert reg.describe() == "a (the first)"
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(len)
    assert ADVANTAGE_ESTIMATORS.prop("rloo", "min_samples") == 2 and ADVANTAGE_ESTIMATORS.prop("grpo", "min_samples") is None


def test_a_registered_objective_may_report_its_clipped_tokens(monkeypatch):
    from oreal.algo import TokenLoss

    def all_clipped(x, cfg):  # a toy: -log pi, every token reported clipped
        return TokenLoss(-x.logp, torch.ones_like(x.mask, dtype=torch.bool))

    monkeypatch.setitem(OBJECTIVES, "all_clipped", all_clipped)
    x = _batch([[(-1.0, 1.0), (-2.0, 1.0)], [(-0.5, 1.0)]], [1.0, -1.0])
    out = policy_loss(x, AlgoConfig(name="grpo", objective="all_clipped", loss_norm="token_mean", kl_coef=0.0))
    assert out.loss.item() == pytest.approx(3.5 / 3) and out.sums["clipped"].item() == 3
