"""The loss's record (`LossInputs`), the registries, and the ratio objectives (ppo_clip / dapo, gspo,
cispo, OREAL's bc with a ratio) against their papers' formulas by hand: ragged rows, pi_old != pi so
that ratios and clips matter, tokens on both sides of every clip bound, values and gradients.
Plus: every preset that was there before the record gives the loss and gradient it gave, bit for bit."""
import itertools
import math

import pytest
import torch

from oreal.algo import (ADVANTAGE_ESTIMATORS, LOSS_AGGREGATIONS, OBJECTIVES, AlgoConfig, LossInputs, Registry,
                        TokenCounts, kl_penalty, policy_loss, select)
from oreal.config import ConfigError

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


def test_on_one_update_ppo_clip_and_gspo_are_pg_bit_for_bit():
    """With pi_old = pi every ratio is 1 and no clip binds: PPO-clip and GSPO(-token) give the
    plain policy gradient's loss and gradient to the bit (so switching a baseline to them changes
    nothing until several updates per batch)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 6, 7, generator=g, requires_grad=True)
    targets = torch.randint(7, (5, 6), generator=g)
    mask = (torch.rand(5, 6, generator=g) > 0.3).float()
    pos, adv, w = torch.rand(5, generator=g) > 0.5, torch.randn(5, generator=g), torch.rand(5, 6, generator=g)
    counts = TokenCounts((mask * pos[:, None]).sum().item(), (mask * ~pos[:, None]).sum().item(), 5, 8)
    out = {}
    for objective in ("pg", "ppo_clip", "gspo"):
        logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
        loss = policy_loss(LossInputs.on_policy(logp, logp.detach() - 0.5, mask, pos, adv, w, counts),
                           AlgoConfig(name="grpo", objective=objective)).loss
        out[objective] = (loss, torch.autograd.grad(loss, logits)[0])
    for objective in ("ppo_clip", "gspo"):
        assert torch.equal(_bits(out[objective][0]), _bits(out["pg"][0]))
        assert torch.equal(_bits(out[objective][1]), _bits(out["pg"][1]))


# -- a ragged batch with pi_old != pi ----------------------------------------------------------------
def _batch(rows, adv, positive=None, dtype=torch.float64):
    """rows: per response, a list of (log pi, r = pi / pi_old) per token; right-padded (the padding
    gets log pi -3 and a ratio of 9, which must count nowhere). logp is a leaf: its .grad is d loss
    / d log pi per token."""
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


def _check(x, cfg, value, grads, clipped=None):
    """policy_loss on the record: its value, d loss / d log pi per token (`grads`, padding 0), the
    clipped count; and the same from two micro-batches (`rows`) with the global counts."""
    out = policy_loss(x, cfg)
    assert out.loss.item() == pytest.approx(value, rel=1e-12, abs=1e-15)
    (g,) = torch.autograd.grad(out.loss, x.logp)
    expect = torch.zeros_like(g)
    for i, row in enumerate(grads):
        expect[i, :len(row)] = torch.tensor(row, dtype=g.dtype)
    assert torch.allclose(g, expect, rtol=1e-10, atol=1e-14), (g, expect)
    if clipped is not None:
        assert (out.sums["clipped"].item(), out.sums["clip_tokens"].item()) == (clipped, x.mask.sum().item())
    n = len(grads) // 2
    halves = sum(policy_loss(x.rows(s), cfg).loss for s in (slice(0, n), slice(n, None)))
    assert halves.item() == pytest.approx(value, rel=1e-12, abs=1e-15)
    assert torch.allclose(torch.autograd.grad(halves, x.logp)[0], expect, rtol=1e-10, atol=1e-14)
    return out


def _ppo_token(r, a, low, high):
    """PPO's clipped surrogate on one token, by hand: (loss, d loss / d log pi, clipped)."""
    c = min(max(r, 1 - low), 1 + high)
    loss = -min(r * a, c * a)
    clipped = (a > 0 and r > 1 + high) or (a < 0 and r < 1 - low)
    return loss, (0.0 if clipped else -a * r), clipped  # d(-r a)/d log pi = -r a


_PPO_ROWS = [  # (log pi, r): A > 0 above 1 + 0.28 (clipped), below it, below 1 - 0.2 (not clipped for A > 0)
    [(-0.5, 1.0), (-1.2, 1.5), (-2.0, 0.7), (-0.3, 1.1)],
    [(-0.9, 0.5), (-1.5, 1.4)],  # A < 0: below 1 - 0.2 (clipped), above 1 + 0.28 (not clipped for A < 0)
    [(-0.2, 0.9), (-0.7, 1.3), (-1.1, 2.0)],  # A > 0: above 1 - 0.2, above 1 + 0.28 twice
    [(-0.4, 0.81), (-0.6, 0.79)],  # A < 0: either side of 1 - 0.2
]
_PPO_ADV = [1.5, -0.5, 0.8, -1.0]


def test_dapo_is_ppo_clip_with_clip_higher_over_every_token_by_hand():
    """DAPO (Yu et al. 2025): 1/sum_i |o_i| sum_i sum_t -min(r A, clip(r, 1 - 0.2, 1 + 0.28) A),
    no KL term; the gradient is -A r per token where the clip does not bind, 0 where it does."""
    cfg = AlgoConfig(name="dapo")
    assert (cfg.objective, cfg.clip_low, cfg.clip_high, cfg.loss_norm, cfg.kl_coef, cfg.advantage, cfg.overlong) == \
        ("ppo_clip", 0.2, 0.28, "token_mean", 0.0, "grpo", "mask")
    n = sum(len(r) for r in _PPO_ROWS)
    per = [[_ppo_token(r, a, 0.2, 0.28) for _, r in row] for row, a in zip(_PPO_ROWS, _PPO_ADV)]
    value = sum(t[0] for row in per for t in row) / n
    clipped = sum(t[2] for row in per for t in row)
    assert clipped == 5  # and 7 tokens where it does not bind
    out = _check(_batch(_PPO_ROWS, _PPO_ADV), cfg, value, [[t[1] / n for t in row] for row in per], clipped)
    assert out.kl.item() > 0 and out.sums["loss_kl"].item() == 0.0  # the KL is measured, not in the loss
    # the symmetric clip (algo.clip_high=0.2) clips one more token: r = 1.25 > 1.2 with A > 0
    x = _batch([[(-0.5, 1.25)], [(-0.1, 1.1)]], [1.0, 1.0])
    _check(x, AlgoConfig(name="dapo", clip_high=0.2), -(1.2 + 1.1) / 2, [[0.0], [-1.1 / 2]], clipped=1)


def test_gspo_clips_whole_responses_by_their_length_normalised_ratio_by_hand():
    """GSPO (Zheng et al. 2025): s_i = exp(mean_t log r_it), J = 1/G sum_i min(s_i A_i,
    clip(s_i, 1 - 3e-4, 1 + 4e-4) A_i), no KL; the gradient of -s_i A_i is -A_i s_i / |y_i| on each of
    its tokens, 0 on a clipped response's."""
    cfg = AlgoConfig(name="gspo")
    assert (cfg.objective, cfg.clip_low, cfg.clip_high, cfg.loss_norm, cfg.kl_coef, cfg.advantage) == \
        ("gspo", 3e-4, 4e-4, "seq_mean_token_mean", 0.0, "grpo")
    logr = [[8e-4, 2e-4, 6e-4, 4e-4],  # A > 0, s above 1 + 4e-4: clipped
            [-9e-4, -1e-4],  # A < 0, s below 1 - 3e-4: clipped
            [-2e-3, 1e-3, -1e-3],  # A > 0, s below 1 - 3e-4: not clipped
            [1e-4],  # A < 0, s inside
            [9e-4, 9e-4]]  # A < 0, s above 1 + 4e-4: not clipped
    adv = [1.0, -0.7, 0.6, -1.2, -0.3]
    rows = [[(-0.3 - 0.1 * t, math.exp(d)) for t, d in enumerate(row)] for row in logr]
    G, value, grads, clipped = len(rows), 0.0, [], 0
    for row, a in zip(logr, adv):
        s = math.exp(sum(row) / len(row))
        c = min(max(s, 1 - 3e-4), 1 + 4e-4)
        value += -min(s * a, c * a) / G
        cut = (a > 0 and s > 1 + 4e-4) or (a < 0 and s < 1 - 3e-4)
        clipped += len(row) if cut else 0
        grads.append([0.0 if cut else -a * s / len(row) / G] * len(row))
    assert [g[0] == 0.0 for g in grads] == [True, True, False, False, False]
    x = _batch(rows, adv)
    _check(x, cfg, value, grads, clipped)
    # GSPO-token's gradient is the sequence form's: autograd through s_i itself
    m, L = x.mask, x.mask.sum(-1)
    s = torch.exp(((x.logp - x.old_logp) * m).sum(-1) / L)
    seq = -torch.minimum(s * x.adv, s.clamp(1 - 3e-4, 1 + 4e-4) * x.adv).mean()
    assert torch.allclose(torch.autograd.grad(seq, x.logp)[0], torch.autograd.grad(policy_loss(x, cfg).loss, x.logp)[0],
                          rtol=1e-12, atol=1e-15)


_CISPO_ROWS = [[(-0.5, 2.5), (-1.0, 0.3), (-0.2, 1.2), (-2.0, 0.6)], [(-0.8, 1.9)], [(-0.4, 6.0), (-1.3, 0.05)]]
_CISPO_ADV = [0.9, -0.4, -1.1]


@pytest.mark.parametrize("low,high", [(1.0, 4.0), (0.5, 1.0)])
def test_cispo_weighs_every_tokens_reinforce_gradient_by_its_clipped_ratio_by_hand(low, high):
    """CISPO (MiniMax-M1, eq. 4-5): 1/sum_i |o_i| sum_i sum_t sg(clip(r, 1 - eps_low, 1 + eps_high)) A
    log pi, no KL. The preset (1.0, 4.0): no lower bound, the ratio capped at 5; (0.5, 1.0) puts
    tokens on both sides of both bounds. No token loses its gradient: -clip(r) A / n each."""
    cfg = AlgoConfig(name="cispo", clip_low=low, clip_high=high)
    assert (AlgoConfig(name="cispo").clip_low, AlgoConfig(name="cispo").clip_high) == (1.0, 4.0)
    assert (cfg.loss_norm, cfg.kl_coef, cfg.advantage) == ("token_mean", 0.0, "grpo")
    n = sum(len(r) for r in _CISPO_ROWS)
    w = [[min(max(r, 1 - low), 1 + high) for _, r in row] for row in _CISPO_ROWS]
    value = sum(-wt * a * lp for row, ws, a in zip(_CISPO_ROWS, w, _CISPO_ADV) for (lp, _), wt in zip(row, ws)) / n
    clipped = sum(r > 1 + high or r < 1 - low for row in _CISPO_ROWS for _, r in row)
    assert clipped == (1 if low == 1.0 else 4)
    _check(_batch(_CISPO_ROWS, _CISPO_ADV), cfg, value, [[-wt * a / n for wt in ws] for ws, a in zip(w, _CISPO_ADV)],
           clipped)


def test_oreal_bc_with_a_ratio_clips_the_negatives_and_clones_the_positives_whole_by_hand():
    """OREAL's bc with pi_old != pi: positives lambda+ * w * A * -log pi over their tokens, no ratio;
    negatives -lambda- * w * A * r with PPO's clip (0.2, 0.2) over theirs."""
    cfg = AlgoConfig(name="ladder_bc", kl_coef=0.0)
    rows = [[(-0.5, 1.6), (-1.0, 0.5)],  # a positive: its ratio changes nothing
            [(-0.7, 0.7), (-0.9, 0.9), (-1.4, 1.3), (-0.2, 1.1)],  # A < 0: below, above 1 - 0.2; above, below 1 + 0.2
            [(-2.0, 0.75), (-0.3, 1.0)]]
    adv = [2 / 3, -2 / 3, -1 / 3]
    w = [[0.5, 1.0], [1.0, 0.25, 1.0, 0.5], [1.0, 0.8]]
    n_pos, n_neg = 2, 6
    value, grads, clipped = 0.0, [], 0
    for i, (row, a) in enumerate(zip(rows, adv)):
        grads.append([])
        for (lp, r), wt in zip(row, w[i]):
            if a > 0:
                value += 1.0 * wt * a * -lp / n_pos
                grads[-1].append(-1.0 * wt * a / n_pos)
            else:
                loss, g, cut = _ppo_token(r, a, 0.2, 0.2)
                value += 0.5 * wt * loss / n_neg
                grads[-1].append(0.5 * wt * g / n_neg)
                clipped += cut
    assert clipped == 2
    x = _batch(rows, adv)
    x = x.with_weights(torch.tensor([row + [0.0] * (4 - len(row)) for row in w], dtype=torch.float64))
    _check(x, cfg, value, grads, clipped)


# -- the registries ---------------------------------------------------------------------------------
def test_registries_name_each_piece_once_and_build_the_help_and_the_validation():
    from oreal.algo.config import OPTIONS

    assert list(OBJECTIVES) == ["bc", "pg", "ppo_clip", "gspo", "cispo"]
    assert OPTIONS["objective"] is OBJECTIVES and OPTIONS["advantage"] is ADVANTAGE_ESTIMATORS
    helps = {f.name: f.metadata["help"] for f in AlgoConfig.__dataclass_fields__.values()}
    for name in OBJECTIVES:
        assert f"{name} (" in helps["objective"]
    for name in ADVANTAGE_ESTIMATORS:
        assert f"{name} (" in helps["advantage"]
    for name in LOSS_AGGREGATIONS:
        assert f"{name} (" in helps["loss_norm"]
    for name in ("dapo", "gspo", "cispo"):
        assert name in helps["name"]
    reg = Registry("thing")
    reg.register("a", help="the first", flag=True)(len)
    assert reg["a"] is len and reg.prop("a", "flag") and reg.prop("a", "other", 3) == 3
    assert reg.describe() == "a (the first)"
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(len)
    assert ADVANTAGE_ESTIMATORS.prop("rloo", "min_samples") == 2 and ADVANTAGE_ESTIMATORS.prop("grpo", "min_samples") is None
    with pytest.raises(ConfigError, match="clip_low"):
        AlgoConfig(clip_low=1.5)
    with pytest.raises(ConfigError, match="clip_high"):
        AlgoConfig(clip_high=-0.1)


def test_a_registered_objective_may_report_its_clipped_tokens(monkeypatch):
    from oreal.algo import TokenLoss

    def all_clipped(x, cfg):  # a toy: -log pi, every token reported clipped
        return TokenLoss(-x.logp, torch.ones_like(x.mask, dtype=torch.bool))

    monkeypatch.setitem(OBJECTIVES, "all_clipped", all_clipped)
    x = _batch([[(-1.0, 1.0), (-2.0, 1.0)], [(-0.5, 1.0)]], [1.0, -1.0])
    out = policy_loss(x, AlgoConfig(name="grpo", objective="all_clipped", loss_norm="token_mean", kl_coef=0.0))
    assert out.loss.item() == pytest.approx(3.5 / 3) and out.sums["clipped"].item() == 3


# -- overlong: a response cut at max_new_tokens ---------------------------------------------------------
def test_overlong_mask_keeps_cut_responses_out_of_the_loss_but_in_their_groups():
    """DAPO's overlong filtering: a cut response (graded incorrect) still counts in its group's pass
    rate and advantages, but is never selected, so its tokens are in no loss sum and no count."""
    rewards = torch.tensor([[1.0, 0, 0, 1], [0.0, 0, 1, 0], [1.0, 1, 1, 1]])
    cut = torch.tensor([[False, True, False, False], [True, True, False, False], [False, False, False, False]])
    graded = select(rewards, AlgoConfig(name="dapo", overlong="incorrect"), cut=cut)
    masked = select(rewards, AlgoConfig(name="dapo"), cut=cut)
    assert torch.equal(masked.keep, graded.keep) and torch.equal(masked.adv, graded.adv)
    assert graded.rows == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert masked.rows == [(0, 0), (0, 2), (0, 3), (1, 2), (1, 3)] and masked.positives == graded.positives == 3
    assert select(rewards, AlgoConfig(name="dapo"), cut=None).rows == graded.rows  # nothing known cut
    for seed in range(10):  # OREAL's pair: the negative is drawn among the finished ones
        pair = select(rewards, AlgoConfig(overlong="mask"), torch.Generator().manual_seed(seed), cut)
        assert (1, 3) in pair.rows and not any(cut[b, k] for b, k in pair.rows) and len(pair.rows) == 4
    # the batch: the counts the aggregations divide by hold the finished responses' tokens only
    from oreal.rollout import Rollout
    from oreal.training.batch import RolloutBatch, SelectedBatch

    groups = [[Rollout(b, k, [1, 2], [5] * (3 + k), "", not cut[b, k]) for k in range(4)] for b in range(3)]
    batch = SelectedBatch.build(RolloutBatch([None] * 3, groups, rewards, 0, 3, cut=cut), masked.rows, masked.adv, 0)
    pos, neg = batch.token_counts()
    assert (pos, neg) == (3 + 6 + 5, 5 + 6) and len(batch.rows) == 5
    assert AlgoConfig().overlong == "incorrect"
    with pytest.raises(ConfigError, match="algo.overlong"):
        AlgoConfig(overlong="drop")
