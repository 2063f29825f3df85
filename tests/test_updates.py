"""Several optimiser steps per batch (`algo.updates_per_batch`, `algo.mini_batches`): pi_old is
the policy before the batch's first step, the ratio objectives' clips bind from the second step,
mini-batches are steps of their own, a resume lands on the same bits, and 1/1 is the old step."""
import copy
import json
from pathlib import Path

import pytest
import torch

import oreal.algo
from oreal.config import ConfigError
from oreal.data import curriculum, save_problems
from oreal.recipes.train import Trainer, train
from oreal.training.config import build_config
from oreal.training.policy import PolicyStage, split_rows

EXPECTED = Path(__file__).parent / "data" / "one_update_per_batch.json"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("updates")
    save_problems(curriculum.generate(200, "train", seed=0), d / "train.jsonl")
    return d


def _cfg(d, out, *extra):
    return build_config(None, [
        f"out={out}", "policy=default", f"data={d / 'train.jsonl'}", "eval_data=null", "steps=3",
        "batch_questions=6", "samples=4", "sampling.max_new_tokens=32", "threads=1", "micro_batch=3",
        "sampling.top_p=1.0", "optim.lr=1e-3", "optim.credit_lr=1e-3", "optim.warmup=0", "algo.actor_freeze_steps=0",
        "prompt.use_chat_template=false", "prompt.system=null", *extra])


def _losses(monkeypatch):
    """Every `policy_loss` call's inputs and output, in order."""
    calls, real = [], oreal.algo.policy_loss

    def spy(inputs, cfg):
        out = real(inputs, cfg)
        calls.append((inputs, out))
        return out
    monkeypatch.setattr(oreal.algo, "policy_loss", spy)
    return calls


def test_settings_are_validated():
    for bad in ("algo.updates_per_batch=0", "algo.mini_batches=0"):
        with pytest.raises(ConfigError, match="at least 1"):
            build_config(None, [bad])
    assert split_rows(5, 2) == [slice(0, 2), slice(2, 5)] and split_rows(1, 2) == [slice(0, 0), slice(0, 1)]


@pytest.mark.parametrize("name", ["oreal", "dapo"])
def test_one_update_per_batch_is_the_old_step(data, verifier, tmp_path, name):
    """1/1 (every preset) takes no extra forward: 3 steps give the metrics the code before
    updates_per_batch gave (recorded in tests/data on this torch), and the same bits as the
    several-steps path forced on with 1/1, whose old log-probs come from their own forward."""
    expected = json.loads(EXPECTED.read_text())
    runs = {}
    for forced in (False, True):
        cfg = _cfg(data, tmp_path / f"{name}{forced}", f"algo.name={name}")
        tr = Trainer(cfg, verifier, log=lambda *a: None)
        if forced:
            tr.policy_stage.__class__ = type("Forced", (PolicyStage,), {"several": property(lambda self: True)})
        try:
            rows = []
            for _ in range(3):
                m = tr.step().metrics
                rows.append({k: m[k] for k in expected[name]["steps"][0]})
            runs[forced] = rows, {n: p.detach().clone() for n, p in tr.policy.state_dict().items()}
        finally:
            tr.close()
    (plain, wp), (forced, wf) = runs[False], runs[True]
    assert plain == forced and all(torch.equal(wp[n], wf[n]) for n in wp)
    if expected["torch"] == torch.__version__:
        assert plain == expected[name]["steps"]
        assert {n: p.double().sum().item() for n, p in sorted(wp.items())} == expected[name]["param_sums"]


def _one_dapo_step(data, verifier, tmp_path, monkeypatch, *overrides):
    """One dapo step with `overrides`: the trainer (closed), its metrics and every policy_loss call."""
    tr = Trainer(_cfg(data, tmp_path / "run", "algo.name=dapo", "steps=1", *overrides), verifier, log=lambda *a: None)
    calls = _losses(monkeypatch)
    try:
        return tr, tr.step().metrics, calls
    finally:
        tr.close()


def test_a_second_update_moves_the_ratio_and_the_clip_binds(data, verifier, tmp_path, monkeypatch):
    """dapo (ppo_clip) with updates_per_batch=2 and a large lr: the first pass's ratios are 1, the
    second's are not, and some are clipped."""
    tr, m, calls = _one_dapo_step(data, verifier, tmp_path, monkeypatch, "algo.updates_per_batch=2", "optim.lr=3e-2")
    assert m["policy_steps"] == 2 and tr.state.actor_steps == 2 and tr.sched.last_epoch == 2
    half = len(calls) // 2
    assert half and len(calls) == 2 * half

    def moved(inputs):
        return ((inputs.ratio() - 1).abs() * inputs.mask).max().item()
    assert all(moved(i) == 0 for i, _ in calls[:half])
    assert max(moved(i) for i, _ in calls[half:]) > 0.2
    assert m["clip_frac"] > 0


def test_mini_batches_are_optimiser_steps_normalised_over_their_own_rows(data, verifier, tmp_path, monkeypatch):
    tr, m, calls = _one_dapo_step(data, verifier, tmp_path, monkeypatch, "algo.mini_batches=2")
    assert m["policy_steps"] == 2 and tr.state.actor_steps == 2 and tr.sched.last_epoch == 2
    counts = list(dict.fromkeys(i.counts for i, _ in calls))  # each mini-batch's, in order
    assert len(counts) == 2 and sum(c.seqs for c in counts) == m["selected"]
    assert sum(c.all for c in counts) == sum(i.mask.sum().item() for i, _ in calls)


def test_old_logprobs_are_the_policy_before_the_batchs_first_step(data, verifier, tmp_path, monkeypatch):
    """With updates_per_batch=2, every micro-batch's old_logp is the pre-update policy's log-probs
    of its inputs (the same tensor in both passes); the reference is computed once."""
    cfg = _cfg(data, tmp_path / "run", "algo.name=dapo", "algo.updates_per_batch=2", "steps=1")
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    before = copy.deepcopy(tr.policy)
    seen, real = [], PolicyStage.backward

    def spy(self, micro, weights, counts, sums, prior=None):
        seen.append((micro, prior))
        return real(self, micro, weights, counts, sums, prior)
    monkeypatch.setattr(PolicyStage, "backward", spy)
    try:
        tr.step()
        half = len(seen) // 2
        assert half and all(p is not None for _, p in seen)
        assert all(seen[j][1][0] is seen[half + j][1][0] for j in range(half))  # one pi_old for both passes
        with torch.no_grad():
            for micro, (old, ref) in seen[:half]:
                assert torch.equal(old, tr.policy_stage.logprobs(before, micro.inputs, entropy=False)[0])
                assert torch.equal(ref, tr.policy_stage.logprobs(tr.ref, micro.inputs, entropy=False)[0])
        assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), tr.policy.parameters()))
    finally:
        tr.close()


def test_resume_after_steps_of_several_updates_is_bit_identical(data, verifier, tmp_path):
    extra = ("algo.name=dapo", "algo.updates_per_batch=2", "algo.mini_batches=2", "save_every=1", "keep_last=3")
    ref = train(_cfg(data, tmp_path / "ref", *extra), verifier, log=lambda *a: None).trainer
    step2 = tmp_path / "ref" / "checkpoints" / "step_0000002"
    run = train(_cfg(data, tmp_path / "run", *extra[:3], f"resume={step2}"), verifier, log=lambda *a: None).trainer
    assert run.state.actor_steps == ref.state.actor_steps > 4
    a, b = ref.policy.state_dict(), run.policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert run.sched.state_dict() == ref.sched.state_dict()


def test_fewer_rows_than_mini_batches_take_one_step_a_row(data, verifier, tmp_path):
    cfg = _cfg(data, tmp_path / "run", "algo.name=dapo", "algo.mini_batches=1000", "steps=1")
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    try:
        m = tr.step().metrics
    finally:
        tr.close()
    assert 1 < m["policy_steps"] == m["selected"] == tr.state.actor_steps


def test_lora_takes_its_reference_once_with_the_adapter_off(data, verifier, tmp_path, monkeypatch):
    """Under LoRA pi_ref is the base model (adapter off), computed with pi_old before the first step:
    a fresh adapter adds 0, so there the two are equal; both are kept for the second pass."""
    pytest.importorskip("peft")
    cfg = _cfg(data, tmp_path / "run", "algo.name=dapo", "algo.kl_coef=0.01", "algo.updates_per_batch=2",
               "lora.enabled=true", "lora.r=4", "optim.lr=3e-2", "steps=1")
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    calls = _losses(monkeypatch)
    try:
        m = tr.step().metrics
    finally:
        tr.close()
    assert tr.ref is None and m["policy_steps"] == 2 and m["loss_kl"] != 0
    half = len(calls) // 2
    first, second = calls[:half], calls[half:]
    assert half and all(torch.equal(i.ref_logp, i.old_logp) for i, _ in first)
    assert all(a.ref_logp is b.ref_logp and a.old_logp is b.old_logp for (a, _), (b, _) in zip(first, second))
