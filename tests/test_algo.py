"""OREAL's pure functions against hand-computed values, gradients and a slow reference."""
import math

import pytest
import torch

from oreal.algo import (ALGORITHMS, LOSS_AGGREGATIONS, OPTIONS, AlgoConfig, LossInputs, TokenCounts, adv_grpo, adv_rloo, group_advantages,
                        kl_penalty, masked_mean, negative_pg_loss, normalise, pass_rate_filter, pg_loss,
                        policy_loss, positive_bc_loss, resolve_algo, credit_correct_count, running_correctness,
                        select_pairs, token_importance_weights, credit_sequence_loss)
from oreal.algo import select as algo_select
from oreal.config import ConfigError


def test_rloo_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    # r_i - mean(others): 1 - 1/3, 0 - 2/3, 0 - 2/3, 1 - 1/3
    assert torch.allclose(adv_rloo(r), torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3]]))
    with pytest.raises(ValueError):
        adv_rloo(torch.tensor([[1.0]]))


def test_grpo_drgrpo_none_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    std = math.sqrt((0.75 ** 2 + 3 * 0.25 ** 2) / 3)  # unbiased
    exp = torch.tensor([[0.75, -0.25, -0.25, -0.25]]) / (std + 1e-4)
    assert torch.allclose(adv_grpo(r), exp, atol=1e-6)
    assert torch.allclose(group_advantages(r, "drgrpo"), torch.tensor([[0.75, -0.25, -0.25, -0.25]]))
    assert torch.equal(group_advantages(r, "none"), r)
    assert torch.equal(group_advantages(torch.ones(1, 3), "grpo"), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="unknown advantage"):
        group_advantages(r, "ppo")


def test_pass_rate_filter_drops_all_right_and_all_wrong():
    r = torch.tensor([[1.0, 1, 1], [0, 0, 0], [1, 0, 0], [1, 1, 0]])
    assert pass_rate_filter(r).tolist() == [False, False, True, True]
    assert pass_rate_filter(r, high=0.5).tolist() == [False, False, True, False]


def test_select_pairs_one_correct_one_incorrect_per_kept_question():
    r = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]])
    keep = pass_rate_filter(r)
    g = torch.Generator().manual_seed(0)
    sel = select_pairs(r, keep, "pair", g)
    assert sel[1].sum() == 0
    for b in (0, 2):
        assert sel[b].sum() == 2
        assert set(r[b][sel[b]].tolist()) == {0.0, 1.0}
    assert select_pairs(r, keep, "all").sum() == 8
    # seeded: the same generator state picks the same pair
    assert torch.equal(select_pairs(r, keep, "pair", torch.Generator().manual_seed(0)), sel)


def test_token_rm_loss_is_bce_on_mean_logit():
    w = torch.tensor([[2.0, 0.0, 9.0], [-1.0, -3.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    r = torch.tensor([1.0, 0.0])
    loss = credit_sequence_loss(w, mask, r)
    s1, s2 = 1.0, -4 / 3  # means over real tokens (the 9.0 is padding)
    exp = -math.log(1 / (1 + math.exp(-s1))) - math.log(1 - 1 / (1 + math.exp(-s2)))
    assert loss.item() == pytest.approx(exp, rel=1e-6)
    loss.backward()
    # d/dw_t = (sigmoid(s) - r) / n_tokens on real tokens, 0 on padding
    g1 = (1 / (1 + math.exp(-s1)) - 1) / 2
    g2 = (1 / (1 + math.exp(-s2))) / 3
    assert torch.allclose(w.grad, torch.tensor([[g1, g1, 0.0], [g2, g2, g2]]), atol=1e-6)


def test_running_correctness_and_threshold_weights():
    w = torch.tensor([[0.0, 2.0, -2.0, 4.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    c = running_correctness(w, mask)
    exp_c = [0.5, 1 / (1 + math.exp(-1)), 0.5, 0.0]
    assert torch.allclose(c, torch.tensor([exp_c]), atol=1e-6)
    pos = token_importance_weights(w, mask, torch.tensor([True]))
    neg = token_importance_weights(w, mask, torch.tensor([False]))
    # positives: max(2c-1, 0); negatives: max(1-2c, 0)
    assert torch.allclose(pos, torch.tensor([[0.0, 2 * exp_c[1] - 1, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(neg, torch.zeros(1, 4), atol=1e-6)
    neg2 = token_importance_weights(-w, mask, torch.tensor([False]))
    assert torch.allclose(neg2, pos, atol=1e-6)
    assert not pos.requires_grad


def test_weights_on_negatives_only_clone_positives_whole():
    w = torch.tensor([[2.0, -6.0, 0.0], [2.0, -6.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    positive = torch.tensor([True, False])
    both = token_importance_weights(w, mask, positive, tau=0.5)
    neg_only = token_importance_weights(w, mask, positive, tau=0.5, sides="negatives")
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # c = sigmoid(2), sigmoid(-2), sigmoid(-4/3); negatives weigh max(1 - 2c, 0)
    assert torch.allclose(both[0], torch.tensor([2 * s(2) - 1, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(neg_only[0], torch.ones(3))  # the positive: every real token weighs 1
    assert torch.allclose(neg_only[1], torch.tensor([0.0, 1 - 2 * s(-2), 0.0]), atol=1e-6)
    assert torch.equal(neg_only[1], both[1])  # padding stays 0 and negatives are untouched
    with pytest.raises(ValueError, match="weighted sides"):
        token_importance_weights(w, mask, positive, sides="positives")


def test_topk_weights_keep_the_highest_and_rescale():
    w = torch.tensor([[3.0, -3.0, 1.0, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    out = token_importance_weights(w, mask, torch.tensor([True]), mode="topk", topk_ratio=0.5)
    c = running_correctness(w, mask)[0]
    assert (out[0] > 0).sum() == 2 and out[0, 4] == 0
    top2 = torch.topk(c[:4], 2)
    assert out[0, top2.indices[0]] == pytest.approx(1.0)
    assert out[0, top2.indices[1]] == pytest.approx((top2.values[1] / top2.values[0]).item())


def test_negative_term_gradient_is_reinforce_with_shaped_advantage():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    targets = torch.tensor([[1, 2, 3], [4, 0, 1]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    adv = torch.tensor([-0.5, -0.25])
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    loss = negative_pg_loss(logp, logp.detach(), mask, torch.ones_like(logp), adv, lambda_neg=0.5)
    assert loss.item() == pytest.approx(-0.5 * (-0.5 * 3 + -0.25 * 2), rel=1e-6)  # ratio is 1
    (g,) = torch.autograd.grad(loss, logits)
    logits2 = logits.detach().clone().requires_grad_(True)
    logp2 = torch.log_softmax(logits2, -1).gather(-1, targets[..., None]).squeeze(-1)
    reinforce = -(0.5 * adv.view(-1, 1) * logp2 * mask).sum()
    (g2,) = torch.autograd.grad(reinforce, logits2)
    assert torch.allclose(g, g2, atol=1e-6)


def test_positive_bc_term_value_and_gradient():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.1, 0.9]])).requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    w = torch.tensor([[1.0, 0.5], [1.0, 1.0]])
    adv = torch.tensor([0.5, 2.0])
    loss = positive_bc_loss(logp, mask, w, adv, lambda_pos=1.0, pos_mult_adv=True)
    exp = 0.5 * (math.log(2) + 0.5 * math.log(4)) + 2.0 * math.log(10)
    assert loss.item() == pytest.approx(exp, rel=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.25], [-2.0, 0.0]]))
    plain = positive_bc_loss(logp.detach(), mask, torch.ones_like(w), adv, pos_mult_adv=False)
    assert plain.item() == pytest.approx(math.log(2) + math.log(4) + math.log(10), rel=1e-6)


def test_kl_estimators_by_hand():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    d = math.log(0.25) - math.log(0.5)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(-d)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(math.exp(d) - d - 1)
    assert kl_penalty(logp, ref, "mse").item() == pytest.approx(0.5 * d * d)
    assert kl_penalty(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k2")


def test_normalise_and_pg_loss():
    assert normalise(torch.tensor(6.0), 3).item() == 2.0
    assert normalise(torch.tensor(6.0), 0).item() == 6.0
    logp = torch.zeros(1, 2)
    assert pg_loss(logp, logp, torch.ones(1, 2), torch.tensor([2.0])).item() == -4.0
    assert masked_mean(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]])).item() == 2.0


def _slow_reference_loss(logp, ref_logp, mask, is_pos, adv, w, cfg, max_new_tokens):
    """Token by token, the loss of OREAL.md step 7 (and the baselines' PG term) for any setting,
    aggregated by each `loss_norm` as its docstring says."""
    N = logp.size(0)
    terms, kls = [[] for _ in range(N)], [[] for _ in range(N)]  # per response: its tokens' terms
    for i in range(N):
        for t in range(logp.size(1)):
            if mask[i, t] == 0:
                continue
            lp, rp, wt = logp[i, t], ref_logp[i, t], w[i, t]
            ratio = torch.exp(lp - lp.detach())  # 1 in value, the gradient of log pi
            if cfg.objective == "bc" and is_pos[i]:
                term = cfg.lambda_pos * wt * (adv[i] if cfg.pos_mult_adv else 1.0) * (-lp)
            elif cfg.objective == "bc":
                term = -cfg.lambda_neg * wt * adv[i] * ratio
            elif cfg.objective == "cispo":  # sg(clip(ratio)) = 1 on-policy, times log pi
                term = -wt * adv[i] * lp
            else:  # pg, ppo_clip and gspo: on-policy every (sequence) ratio is 1 and no clip binds
                term = -wt * adv[i] * ratio
            d = rp - lp
            terms[i].append(term)
            kls[i].append({"k1": -d, "k3": torch.exp(d) - d - 1, "mse": 0.5 * d * d}[cfg.kl_kind])
    n_pos = sum(len(terms[i]) for i in range(N) if is_pos[i])
    n_neg = sum(len(terms[i]) for i in range(N) if not is_pos[i])

    def agg(per_row, rows, side):
        total = sum((sum(per_row[i]) for i in rows), torch.zeros(()))
        if cfg.loss_norm == "token_mean":
            return total / (n_pos + n_neg)
        if cfg.loss_norm == "side_token_mean":
            return total / max({"pos": n_pos, "neg": n_neg, "all": n_pos + n_neg}[side], 1)
        if cfg.loss_norm == "seq_mean_token_mean":
            return sum((sum(per_row[i]) / max(len(per_row[i]), 1) for i in rows), torch.zeros(())) / N
        if cfg.loss_norm == "seq_mean_token_sum":
            return total / N
        assert cfg.loss_norm == "seq_mean_token_sum_norm"
        return total / (N * max_new_tokens)

    pos_rows = [i for i in range(N) if is_pos[i]]
    neg_rows = [i for i in range(N) if not is_pos[i]]
    return agg(terms, pos_rows, "pos") + agg(terms, neg_rows, "neg") + cfg.kl_coef * agg(kls, range(N), "all")


def _preset_batch(cfg, seed):
    """Rewards -> filter -> selection -> advantages through `algo.select`, as the trainer calls it."""
    g = torch.Generator().manual_seed(seed)
    rewards = (torch.rand(4, 4, generator=g) > 0.5).float()
    rewards[0] = torch.tensor([1.0, 0, 0, 1])  # at least one question with signal
    sel = algo_select(rewards, cfg, g)
    b, k = torch.tensor([b for b, _ in sel.rows]), torch.tensor([k for _, k in sel.rows])
    return rewards[b, k] == 1, sel.adv[b, k]


def test_select_composes_filter_selection_and_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0, 0, 1], [1.0, 1, 1, 1], [0.0, 0, 0, 0], [0.0, 1, 0, 0]])
    sel = algo_select(rewards, AlgoConfig(name="ladder_shaping"))  # the filter, then every response of the kept
    assert sel.keep.tolist() == [True, False, False, True]
    assert sel.rows == [(0, 0), (0, 1), (0, 2), (0, 3), (3, 0), (3, 1), (3, 2), (3, 3)]
    assert sel.positives == 3
    assert torch.equal(sel.adv, group_advantages(rewards, "rloo"))
    pair = algo_select(rewards, AlgoConfig(), torch.Generator().manual_seed(0))  # oreal: one pair, RLOO
    assert len(pair.rows) == 4 and pair.positives == 2 and {b for b, _ in pair.rows} == {0, 3}
    for q in (0, 3):  # one right and one wrong response of each kept question
        assert sorted(rewards[b, k].item() for b, k in pair.rows if b == q) == [0.0, 1.0]
    assert pair.adv[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])  # r - mean of the other 3
    everything = algo_select(rewards, AlgoConfig(name="reinforce"))  # no filter: every response
    assert everything.keep.all() and len(everything.rows) == 16


@pytest.mark.parametrize("kl_kind", ["k1", "k3", "mse"])
@pytest.mark.parametrize("preset,loss_norm", [(p, None) for p in sorted(ALGORITHMS)]
                         + [("oreal", n) for n in sorted(LOSS_AGGREGATIONS)] + [("grpo", n) for n in sorted(LOSS_AGGREGATIONS)])
def test_policy_loss_matches_slow_per_token_reference_for_every_preset(preset, loss_norm, kl_kind):
    cfg = resolve_algo(AlgoConfig(name=preset, kl_kind=kl_kind, kl_coef=0.05), set())
    if loss_norm:  # every aggregation with both objectives
        cfg = AlgoConfig(**{**cfg.__dict__, "loss_norm": loss_norm})
    torch.manual_seed(1)
    is_pos, adv = _preset_batch(cfg, seed=3)
    N, T, V, max_new = is_pos.numel(), 5, 7, 8
    logits = torch.randn(N, T, V, requires_grad=True)
    ref_logits = torch.randn(N, T, V)
    targets = torch.randint(V, (N, T))
    mask = (torch.rand(N, T) > 0.2).float()
    mask[:, 0] = 1
    w = torch.rand(N, T) if cfg.uses_credit else torch.ones(N, T)

    def lp(x):
        return torch.log_softmax(x, -1).gather(-1, targets[..., None]).squeeze(-1)

    logp, ref_logp = lp(logits), lp(ref_logits)
    counts = TokenCounts((mask * is_pos[:, None]).sum().item(), (mask * ~is_pos[:, None]).sum().item(), N, max_new)
    fast = policy_loss(LossInputs.on_policy(logp, ref_logp, mask, is_pos, adv, w, counts), cfg)
    slow = _slow_reference_loss(logp, ref_logp, mask, is_pos, adv, w, cfg, max_new)
    assert fast.loss.item() == pytest.approx(slow.item(), rel=1e-5, abs=1e-6)  # GRPO terms nearly cancel
    assert fast.loss.item() == pytest.approx((fast.pos + fast.neg + cfg.kl_coef * fast.kl).item(), rel=1e-6)
    (g_fast,) = torch.autograd.grad(fast.loss, logits, retain_graph=True)
    (g_slow,) = torch.autograd.grad(slow, logits, retain_graph=True)
    assert torch.allclose(g_fast, g_slow, atol=1e-6)
    # micro-batches with the global counts add up to the whole batch, value and gradient
    halves = [policy_loss(LossInputs.on_policy(logp[s], ref_logp[s], mask[s], is_pos[s], adv[s], w[s], counts), cfg).loss
              for s in (slice(0, N // 2), slice(N // 2, N))]
    assert sum(halves).item() == pytest.approx(fast.loss.item(), rel=1e-5, abs=1e-6)
    (g_split,) = torch.autograd.grad(sum(halves), logits)
    assert torch.allclose(g_split, g_fast, atol=1e-6)


def test_policy_loss_kl_sum_and_parts_by_hand():
    cfg = AlgoConfig(kl_coef=0.5)
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.25], [0.5, 0.5]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = policy_loss(LossInputs.on_policy(logp, ref, mask, torch.tensor([True, False]), torch.tensor([0.5, -0.5]),
                                           torch.ones(2, 2), TokenCounts(2, 1, 2, 4)), cfg)
    d = math.log(0.5)  # only the first token differs from the reference
    assert out.kl_sum.item() == pytest.approx(math.exp(d) - d - 1)
    assert out.kl.item() == pytest.approx((math.exp(d) - d - 1) / 3)
    assert out.pos.item() == pytest.approx(0.5 * (math.log(2) + math.log(4)) / 2)
    assert out.neg.item() == pytest.approx(-0.5 * -0.5 * 1.0 / 1)


def test_algo_config_validation_iterates_the_registries():
    for key, allowed in OPTIONS.items():
        for value in allowed:
            AlgoConfig(**{key: value}).validate()
        with pytest.raises(ConfigError, match=f"algo.{key}"):
            AlgoConfig(**{key: "bogus"}).validate()
    with pytest.raises(ConfigError, match="algo.name"):
        AlgoConfig(name="ppo").validate()
    # the pure functions reject what the registries do not hold, naming the choices
    with pytest.raises(ValueError, match="pair"):
        select_pairs(torch.ones(1, 2), torch.ones(1, dtype=torch.bool), "best")
    with pytest.raises(ValueError, match="threshold"):
        token_importance_weights(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([True]), mode="soft")


def test_presets_and_explicit_keys():
    assert resolve_algo(AlgoConfig(name="grpo"), set()).advantage == "grpo"
    assert resolve_algo(AlgoConfig(name="grpo", advantage="rloo"), {"advantage"}).advantage == "rloo"
    for name in ALGORITHMS:
        resolve_algo(AlgoConfig(name=name), set()).validate()


def test_rm_correct_count():
    logits = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    # sequence scores 1.5 (> 0, correct), -0.25 (< 0, called incorrect), empty (never counts)
    assert credit_correct_count(logits, mask, torch.tensor([True, True, True])) == 1
    assert credit_correct_count(logits, mask, torch.tensor([True, False, False])) == 2


def test_token_entropy_by_hand_and_in_chunks():
    from oreal.algo import token_entropy

    logits = torch.tensor([[[0.0, 0.0, -1e4], [0.0, -1e4, -1e4]]])  # (1/2, 1/2, 0) and (1, 0, 0)
    assert torch.allclose(token_entropy(logits), torch.tensor([[math.log(2), 0.0]]), atol=1e-6)
    x = torch.randn(7, 5, 11)
    assert torch.equal(token_entropy(x, max_elements=5 * 11 * 2), token_entropy(x))  # 2 rows a chunk


def test_engine_ratio_and_truncated_importance_weights_by_hand():
    from oreal.algo import engine_ratio, truncated_is_weights

    logp = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    engine = torch.log(torch.tensor([[0.5, 0.1, 0.3]]))
    assert torch.allclose(engine_ratio(logp, engine), torch.tensor([[1.0, 2.0, 3.0]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert torch.allclose(truncated_is_weights(logp, engine, mask, cap=1.5), torch.tensor([[1.0, 1.5, 0.0]]))
    x = logp.clone().requires_grad_(True)
    assert not truncated_is_weights(x, engine, mask, 2.0).requires_grad  # a weight, never a gradient path
    with pytest.raises(ConfigError, match="tis_cap"):
        AlgoConfig(tis_cap=-1.0)


# -- where oreal differs from the reference (InternLM/OREAL train_oreal.py), pinned ----------------
def _reference_topk_rescale(prob, topk_ratio=0.5):
    """train_oreal.py's topk_rescale, as written there (one sequence's response tokens)."""
    topk_num = int(prob.numel() * topk_ratio)
    values, indices = torch.topk(prob, topk_num)
    result = torch.zeros_like(prob)
    if values.max() != values.min():
        normalized_values = (values - values.min()) / (values.max() - values.min())
    else:
        normalized_values = torch.ones_like(values)
    result[indices] = normalized_values
    return result


def test_topk_minmax_is_the_references_topk_rescale_and_topk_is_oreals_own():
    from oreal.algo.credit import TOKEN_WEIGHTS

    score = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3, 0.0], [0.4, 0.4, 0.4, 0.4, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.float)
    got = TOKEN_WEIGHTS["topk_minmax"](score, mask, 0.5, 0.5)
    for i in range(2):
        n = int(mask[i].sum())
        assert torch.equal(got[i, :n], _reference_topk_rescale(score[i, :n], 0.5)) and got[i, n:].eq(0).all()
    assert got[0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # int(5 * 0.5) = 2 kept: 0.9 -> 1, 0.7 -> 0
    assert sorted(got[1].tolist()) == [0.0] * 4 + [1.0, 1.0]  # two of four equal values kept: ones
    # oreal's topk: ceil(5 * 0.5) = 3 kept, divided by the largest (0.9)
    assert torch.allclose(TOKEN_WEIGHTS["topk"](score, mask, 0.5, 0.5)[0],
                          torch.tensor([1.0, 0.0, 0.5 / 0.9, 0.7 / 0.9, 0.0, 0.0]))
    # n * ratio < 1: the reference's topk(0) then fails on values.max(); topk_minmax keeps none
    with pytest.raises(RuntimeError):
        _reference_topk_rescale(torch.tensor([0.3]), 0.5)
    assert TOKEN_WEIGHTS["topk_minmax"](torch.tensor([[0.3]]), torch.ones(1, 1), 0.5, 0.5).tolist() == [[0.0]]


def test_k1_is_the_kl_estimate_the_references_kl_type_kl_has_the_opposite_sign():
    """oreal's k1 is log pi - log ref (a KL(pi || ref) estimate, minimised toward the reference);
    the reference's kl_type="kl" adds kl_coef * (ref - logp), whose minimum raises log pi. The
    reference run uses kl_type="unbias" (k3, oreal's default), where both agree."""
    from oreal.algo.losses import kl_k1, kl_k3

    logp, ref = torch.tensor([-0.5, -2.0]), torch.tensor([-1.0, -1.0])
    assert kl_k1(logp, ref).tolist() == [0.5, -1.0]
    assert torch.equal(kl_k1(logp, ref), -(ref - logp))
    d = ref - logp  # the reference's "unbias": exp(d) - d - 1
    assert torch.equal(kl_k3(logp, ref), torch.exp(d) - d - 1)


def test_grpo_epsilon_is_a_setting_with_the_references_value_one_key_away():
    from oreal.algo import select

    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    ours = select(rewards, AlgoConfig(name="grpo")).adv
    ref = select(rewards, AlgoConfig(name="grpo", adv_eps=1e-8)).adv
    std = rewards.std(-1, keepdim=True)  # unbiased, as the reference's torch.std
    assert torch.allclose(ours, (rewards - 0.25) / (std + 1e-4)) and torch.allclose(ref, (rewards - 0.25) / (std + 1e-8))
    assert not torch.equal(ours, ref)


def test_ladder_bc_drops_uniform_questions_and_filter_false_keeps_them_as_the_reference_does():
    """The reference's config without a token RM (filter_trajectory=False) keeps all-right and
    all-wrong questions: advantage 0, but in the loss's token counts and the KL. ladder_bc filters
    them; algo.filter=false reproduces the reference."""
    from oreal.algo import select

    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    ladder = select(rewards, AlgoConfig(name="ladder_bc"))
    assert ladder.keep.tolist() == [True, False, False] and {b for b, _ in ladder.rows} == {0}
    like_ref = select(rewards, AlgoConfig(name="ladder_bc", filter=False))
    assert len(like_ref.rows) == 12 and like_ref.adv[1:].eq(0).all()


def test_a_new_objective_is_a_function_and_one_registry_line(monkeypatch):
    """algo.objective names a function of OBJECTIVES; registering one makes it a valid setting and
    policy_loss adds the KL term to what it returns."""
    from oreal.algo import objective
    from oreal.algo.objective import OBJECTIVES

    def neg_logp(inputs, cfg):  # a toy: -log pi on every token
        return -inputs.logp

    monkeypatch.setitem(OBJECTIVES, "mean_logp", neg_logp)
    cfg = AlgoConfig(name="grpo", objective="mean_logp", kl_coef=0.5, loss_norm="token_mean")
    logp = torch.tensor([[-1.0, -2.0], [-3.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = objective.policy_loss(LossInputs.on_policy(logp, logp.detach() + 0.1, mask, torch.tensor([True, False]),
                                                     torch.zeros(2), torch.ones(2, 2), TokenCounts(2, 1, 2, 8)), cfg)
    d = 0.1  # ref - logp on every token
    assert out.pos.item() == pytest.approx(3.0 / 3) and out.neg.item() == pytest.approx(3.0 / 3)
    assert out.loss.item() == pytest.approx(2.0 + 0.5 * (math.exp(d) - d - 1))
    with pytest.raises(ConfigError, match="algo.objective"):
        AlgoConfig(objective="nope")


# -- each preset against its paper's formula, through the trainer's own path ----------------------
# A ragged batch of 3 questions x 4 samples: a mixed group, an all-correct one and an all-wrong one,
# responses of 1 to 6 tokens, kl_coef 0.1. Each `_paper_*` is written from the paper with plain
# Python over responses and tokens (its own advantages, its own filter), and is compared with
# `algo.select` -> `policy_loss` with the global counts, value and gradient, whole and in two halves.
_REWARDS = [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
_LENGTHS = [[3, 6, 1, 4], [2, 5, 5, 3], [6, 1, 2, 4]]
_MAX_NEW, _BETA = 8, 0.1


def _ragged_batch():
    torch.manual_seed(7)
    B, K, T, V = 3, 4, max(max(r) for r in _LENGTHS), 5
    logits = torch.randn(B * K, T, V, requires_grad=True)
    ref_logits = torch.randn(B * K, T, V)
    targets = torch.randint(V, (B * K, T))
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    ref = torch.log_softmax(ref_logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    return logits, logp, ref


def _k3(lp, rp):
    d = rp - lp
    return torch.exp(d) - d - 1


def _mean(xs):
    return sum(xs) / len(xs)


def _std(xs):  # unbiased, as TRL and the reference take torch.std
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _ratio(lp):
    """pi / pi_old on-policy: 1 in value, the gradient of log pi (the surrogate the papers optimise)."""
    return torch.exp(lp - lp.detach())


def _seq(logp, ref, i, n):
    """Response i's tokens: its log-probs (the policy-gradient term's gradient is that of log pi; the
    ratio is 1 in value) and its per-token k3."""
    return [logp[i, t] for t in range(n)], [_k3(logp[i, t], ref[i, t]) for t in range(n)]


def _paper_grpo(logp, ref):
    """DeepSeekMath eq. 3 (outcome supervision): A_i = (r_i - mean(r)) / std(r) per group, every
    group kept; J = 1/G sum_i 1/|o_i| sum_t [ratio * A_i - beta * KL_t], averaged over questions."""
    losses = []
    for b, rs in enumerate(_REWARDS):
        adv = [(r - _mean(rs)) / (_std(rs) + 1e-4) for r in rs]  # TRL's and oreal's eps
        for k, r in enumerate(rs):
            lps, kls = _seq(logp, ref, b * 4 + k, _LENGTHS[b][k])
            losses.append(_mean([-_ratio(lp) * adv[k] + _BETA * kl for lp, kl in zip(lps, kls)]))
    return _mean(losses)


def _paper_drgrpo(logp, ref):
    """Dr. GRPO (Liu et al. 2025): A_i = r_i - mean(r), no std; each response's token sum over the
    constant max_new_tokens (no 1/|o_i|), averaged over responses; every group kept."""
    losses = []
    for b, rs in enumerate(_REWARDS):
        for k, r in enumerate(rs):
            lps, kls = _seq(logp, ref, b * 4 + k, _LENGTHS[b][k])
            a = r - _mean(rs)
            losses.append(sum(-_ratio(lp) * a + _BETA * kl for lp, kl in zip(lps, kls)) / _MAX_NEW)
    return _mean(losses)


def _paper_rloo(logp, ref):
    """RLOO (Ahmadian et al. 2024): the whole response is one action, A_i = r_i - mean of the other
    K - 1 rewards; 1/K sum_i A_i grad log pi(y_i), log pi(y_i) the sum over its tokens; every group
    kept. (The paper puts beta * KL into the reward; oreal adds it as a loss term, aggregated alike.)"""
    losses = []
    for b, rs in enumerate(_REWARDS):
        for k, r in enumerate(rs):
            lps, kls = _seq(logp, ref, b * 4 + k, _LENGTHS[b][k])
            a = r - (sum(rs) - r) / (len(rs) - 1)
            losses.append(sum(-_ratio(lp) * a + _BETA * kl for lp, kl in zip(lps, kls)))
    return _mean(losses)


def _paper_reinforce(logp, ref):
    """OREAL's Table 2 baseline: A = r, every group kept, every token of the batch weighing the same."""
    toks = []
    for b, rs in enumerate(_REWARDS):
        for k, r in enumerate(rs):
            lps, kls = _seq(logp, ref, b * 4 + k, _LENGTHS[b][k])
            toks += [-_ratio(lp) * r + _BETA * kl for lp, kl in zip(lps, kls)]
    return _mean(toks)


def _paper_oreal(logp, ref, rows):
    """OREAL (OREAL.md step 7): groups with pass rate 0 or 1 dropped; one right and one wrong
    response per kept question (`rows`, the trainer's draw); RLOO advantages; positives'
    lambda+ * A * -log pi over the positives' tokens, negatives' -lambda- * A * log pi over theirs,
    beta * k3 over all tokens."""
    pos, neg, kl = [], [], []
    for b, k in rows:
        rs = _REWARDS[b]
        a = rs[k] - (sum(rs) - rs[k]) / (len(rs) - 1)
        lps, kls = _seq(logp, ref, b * 4 + k, _LENGTHS[b][k])
        (pos if rs[k] == 1 else neg).extend(1.0 * a * -lp if rs[k] == 1 else -0.5 * a * _ratio(lp) for lp in lps)
        kl += kls
    return _mean(pos) + _mean(neg) + _BETA * _mean(kl)


@pytest.mark.parametrize("preset", ["grpo", "drgrpo", "rloo", "reinforce", "oreal"])
def test_each_preset_is_its_papers_loss_on_a_ragged_batch_with_uniform_groups(preset):
    cfg = AlgoConfig(name=preset, kl_coef=_BETA, token_weights="none")
    rewards = torch.tensor(_REWARDS)
    sel = algo_select(rewards, cfg, torch.Generator().manual_seed(0))
    logits, logp, ref = _ragged_batch()
    idx = [b * 4 + k for b, k in sel.rows]
    mask = torch.zeros(len(idx), logp.size(1))
    for j, (b, k) in enumerate(sel.rows):
        mask[j, :_LENGTHS[b][k]] = 1
    is_pos = torch.tensor([_REWARDS[b][k] == 1 for b, k in sel.rows])
    adv = torch.stack([sel.adv[b, k] for b, k in sel.rows])
    counts = TokenCounts((mask * is_pos[:, None]).sum().item(), (mask * ~is_pos[:, None]).sum().item(),
                         len(idx), _MAX_NEW)
    got = policy_loss(LossInputs.on_policy(logp[idx], ref[idx], mask, is_pos, adv, torch.ones_like(mask), counts), cfg).loss
    paper = {"grpo": _paper_grpo, "drgrpo": _paper_drgrpo, "rloo": _paper_rloo, "reinforce": _paper_reinforce,
             "oreal": lambda lp, rf: _paper_oreal(lp, rf, sel.rows)}[preset](logp, ref)
    if preset == "oreal":  # the filter and the pair: 2 responses of the mixed question only
        assert [b for b, _ in sel.rows] == [0, 0]
    else:  # the papers keep the all-right and all-wrong groups: zero advantage, tokens and KL counted
        assert len(sel.rows) == 12
    assert got.item() == pytest.approx(paper.item(), rel=1e-6, abs=1e-7)
    (g_got,) = torch.autograd.grad(got, logits, retain_graph=True)
    (g_paper,) = torch.autograd.grad(paper, logits, retain_graph=True)
    assert torch.allclose(g_got, g_paper, atol=1e-7), (g_got - g_paper).abs().max()
    n = len(idx) // 2  # two micro-batches with the global counts: the same loss and gradient
    halves = sum(policy_loss(LossInputs.on_policy(logp[idx][s], ref[idx][s], mask[s], is_pos[s], adv[s],
                                                  torch.ones_like(mask[s]), counts), cfg).loss
                 for s in (slice(0, n), slice(n, None)))
    (g_halves,) = torch.autograd.grad(halves, logits)
    assert halves.item() == pytest.approx(paper.item(), rel=1e-6, abs=1e-7)
    assert torch.allclose(g_halves, g_paper, atol=1e-7)


def test_the_aggregations_differ_on_ragged_rows_and_agree_on_equal_ones():
    """token mean, sequence mean of token means and sequence mean of token sums are one number on
    rows of one length (up to the constant), and three on ragged rows: the setting matters."""
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    ragged = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    counts = TokenCounts(5.0, 0.0, 2, 4)
    by = {name: fn(x, ragged, counts, "all").item() for name, fn in LOSS_AGGREGATIONS.items()}
    assert by["token_mean"] == pytest.approx(8 / 5)
    assert by["side_token_mean"] == pytest.approx(8 / 5)  # side "all": every token
    assert by["seq_mean_token_mean"] == pytest.approx((4 / 4 + 4 / 1) / 2)
    assert by["seq_mean_token_sum"] == pytest.approx(8 / 2)
    assert by["seq_mean_token_sum_norm"] == pytest.approx(8 / (2 * 4))
    full = torch.ones(2, 4)
    even = {name: fn(full * 2, full, TokenCounts(8.0, 0.0, 2, 4), "all").item() for name, fn in LOSS_AGGREGATIONS.items()}
    assert even["token_mean"] == even["seq_mean_token_mean"] == even["seq_mean_token_sum_norm"] == 2.0
