"""The training loop on a tiny model: it changes what it should, logs every field, and
micro-batching gives the same update as one big batch."""
import json

import pytest
import torch

from oreal.config import ConfigError
from oreal.data import curriculum, save_problems
from oreal.algo import ALGORITHMS
from oreal.recipes.train import METRIC_FIELDS, Trainer, train
from oreal.training.callbacks import Callback
from oreal.training.config import build_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    # The embedded policy is partly right on the curriculum, so rewards carry real signal.
    d = tmp_path_factory.mktemp("train")
    save_problems(curriculum.generate(200, "train", seed=0), d / "train.jsonl")
    save_problems(curriculum.generate(20, "test", seed=0), d / "test.jsonl")
    return d


def _cfg(d, out, *extra):
    return build_config(None, [
        f"out={out}", "policy=default", f"data={d / 'train.jsonl'}", f"eval_data={d / 'test.jsonl'}",
        "steps=3", "batch_questions=6", "samples=4", "sampling.max_new_tokens=64",
        "sampling.top_p=1.0", "optim.lr=1e-3", "optim.credit_lr=1e-3", "optim.warmup=0",
        "algo.actor_freeze_steps=1", "prompt.use_chat_template=false", "prompt.system=null",
        *extra])


def test_oreal_steps_change_policy_and_token_rm_and_log_every_field(tiny_run, verifier, tmp_path):
    cfg = _cfg(tiny_run, tmp_path / "run")
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    p0 = {k: v.clone() for k, v in tr.policy.state_dict().items()}
    r0 = {k: v.clone() for k, v in tr.credit.model.state_dict().items()}
    history = train(cfg, verifier, log=lambda *a: None, trainer=tr).history
    assert len(history) == 3
    assert history[0]["actor_updated"] is False and history[1]["actor_updated"] is True
    changed = [k for k, v in tr.policy.state_dict().items() if not torch.equal(v, p0[k])]
    assert changed, "the policy did not change"
    assert any(not torch.equal(v, r0[k]) for k, v in tr.credit.model.state_dict().items())
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert set(METRIC_FIELDS) <= set(row), set(METRIC_FIELDS) - set(row)
    # a step where every question was all-right or all-wrong is skipped and logs no losses
    updated = [r for r in rows if not r["skipped"]]
    assert updated and all(r["credit_loss"] is not None for r in updated)
    assert any(r["loss"] is not None for r in updated if r["actor_updated"])
    assert (tmp_path / "run" / "config.yaml").exists()
    assert (tmp_path / "run" / "final" / "policy" / "model.safetensors").exists()
    assert (tmp_path / "run" / "final" / "credit" / "model.safetensors").exists()


def test_reference_stays_frozen(tiny_run, verifier, tmp_path):
    cfg = _cfg(tiny_run, tmp_path / "run", "steps=2", "algo.actor_freeze_steps=0")
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    ref0 = {k: v.clone() for k, v in tr.ref.state_dict().items()}
    train(cfg, verifier, log=lambda *a: None, trainer=tr)
    assert all(torch.equal(v, ref0[k]) for k, v in tr.ref.state_dict().items())


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_preset_runs(tiny_run, verifier, tmp_path, name):
    cfg = _cfg(tiny_run, tmp_path / name, f"algo.name={name}", "steps=2", "algo.actor_freeze_steps=0",
               "batch_questions=8")
    history = train(cfg, verifier, log=lambda *a: None).history
    assert len(history) == 2
    # a step where every question is all-right or all-wrong is skipped; the rest update the actor
    assert all(h["actor_updated"] or h["skipped"] for h in history)
    assert any(h["actor_updated"] for h in history)


def _one_update_grads(tiny_run, verifier, tmp_path, micro):
    """The clipped gradients of one step (compared before AdamW, which amplifies round-off in
    parameters whose true gradient is zero, such as attention key biases)."""
    cfg = _cfg(tiny_run, tmp_path / f"mb{micro}", "steps=1", "algo.actor_freeze_steps=0",
               f"micro_batch={micro}", "algo.token_weights=threshold", "batch_questions=8")
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    grads = {}

    def capture(model, key):
        def hook(optimizer, args, kwargs):  # before the step (replacing step() would upset the scheduler)
            grads[key] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return hook

    tr.opt.register_step_pre_hook(capture(tr.policy, "policy"))
    tr.credit.opt.register_step_pre_hook(capture(tr.credit.model, "rm"))
    m = tr.step().metrics
    assert m["selected"] > 3  # the comparison needs several micro-batches
    return grads


def test_micro_batches_give_the_same_update_as_one_big_batch(tiny_run, verifier, tmp_path):
    big = _one_update_grads(tiny_run, verifier, tmp_path, 64)
    small = _one_update_grads(tiny_run, verifier, tmp_path, 3)
    for model in ("policy", "rm"):
        assert big[model].keys() == small[model].keys()
        for k in big[model]:
            assert torch.allclose(big[model][k], small[model][k], rtol=1e-4, atol=1e-7), (model, k)


def test_config_errors_name_the_key(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'stepz'"):
        build_config(None, ["stepz=3"])
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        build_config(None, ["steps=many"])
    with pytest.raises(ConfigError, match="algo.advantage"):
        build_config(None, ["algo.advantage=ppo"])
    with pytest.raises(ConfigError, match="unknown config key 'algo.lamda_pos'"):
        build_config(None, ["algo.lamda_pos=1"])
    cfg = build_config(None, ["algo.name=grpo", "algo.kl_coef=0.0"])
    assert cfg.algo.advantage == "grpo" and cfg.algo.objective == "ppo_clip" and cfg.algo.kl_coef == 0.0


def test_defaults_equal_the_reference_run():
    cfg = build_config(None, [])
    a, o = cfg.algo, cfg.optim
    assert (cfg.batch_questions, cfg.samples, cfg.steps) == (64, 16, 90)
    assert (a.advantage, a.select, a.tau, a.lambda_pos, a.lambda_neg, a.kl_coef, a.kl_kind) == \
        ("rloo", "pair", 0.5, 1.0, 0.5, 0.01, "k3")
    assert a.pos_mult_adv and a.actor_freeze_steps == 10
    assert (o.lr, o.min_lr, o.credit_lr, o.credit_min_lr, o.warmup, o.weight_decay, o.grad_clip) == \
        (5e-7, 1e-7, 2e-6, 4e-7, 10, 0.01, 1.0)
    assert (cfg.sampling.temperature, cfg.sampling.top_p) == (1.0, 0.9)


def test_lora_trains_only_the_adapter_and_saves_a_peft_adapter(tiny_run, verifier, tmp_path):
    peft = pytest.importorskip("peft")
    from oreal.models import load_policy

    cfg = _cfg(tiny_run, tmp_path / "run", "lora.enabled=true", "lora.r=4", "algo.actor_freeze_steps=0",
               "steps=2", "batch_questions=8", "algo.name=ladder_bc")
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    before = {k: v.clone() for k, v in tr.policy.state_dict().items()}
    history = train(cfg, verifier, log=lambda *a: None, trainer=tr).history
    assert any(h["actor_updated"] for h in history)
    after = tr.policy.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all("lora_" in k for k in changed), sorted(changed)[:5]
    assert tr.ref is None  # the reference is the base model with the adapter disabled
    adapter = tmp_path / "run" / "final" / "policy"
    assert (adapter / "adapter_model.safetensors").exists()
    loaded = peft.PeftModel.from_pretrained(load_policy("default"), str(adapter)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, tr.policy(input_ids=ids).logits, atol=1e-5)
        with tr.policy.disable_adapter():
            base = tr.policy(input_ids=ids).logits
        assert torch.allclose(base, load_policy("default")(input_ids=ids).logits, atol=1e-6)


def test_difficulty_balancing_is_wired_into_training(tmp_path, verifier):
    from oreal.data import Problem
    from oreal.errors import DataError

    rates = [0.1, 0.3, 0.5, 0.7, 0.9, 0.0]
    probs = [Problem(id=f"q{i}", question=f"Compute {i}+1.", gold=str(i + 1), pass_rate=r) for i, r in enumerate(rates)]
    save_problems(probs, tmp_path / "rated.jsonl")
    cfg = build_config(None, [f"out={tmp_path / 'run'}", f"data={tmp_path / 'rated.jsonl'}", "data_preset=oreal_records",
                              "data_balance=true", "eval_data=null", "steps=1", "prompt.use_chat_template=false",
                              "sampling.max_new_tokens=64"])
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    assert len(tr.problems) == 6 + 4 + 4 + 2 + 0 + 6
    tr.close()
    # 1,024 response tokens given explicitly do not fit the embedded model's 256 positions: every
    # engine refuses before the first step (hf_sampler sampled past its positions without a word);
    # the default (auto) fits them (tests/test_lengths.py)
    too_long = build_config(None, [f"out={tmp_path / 'run3'}", f"data={tmp_path / 'rated.jsonl'}",
                                   "data_preset=oreal_records", "eval_data=null", "prompt.use_chat_template=false",
                                   "sampling.max_new_tokens=1024"])
    for engine in ("hf_sampler", "hf_device", "hf_generate"):
        too_long.engine = engine
        with pytest.raises(ConfigError, match=f"engine={engine}: a prompt of 12 tokens \\+ max_new_tokens 1024 "
                                              "exceeds the engine's max_model_len 256"):
            Trainer(too_long, verifier, log=lambda *a: None)
    save_problems([Problem(id="x", question="Compute 1+1.", gold="2")], tmp_path / "unrated.jsonl")
    cfg = build_config(None, [f"out={tmp_path / 'run2'}", f"data={tmp_path / 'unrated.jsonl'}",
                              "data_preset=oreal_records", "data_balance=true", "eval_data=null"])
    with pytest.raises(DataError, match="oreal data passrate"):
        Trainer(cfg, verifier, log=lambda *a: None)


def test_schedule_is_transformers_cosine_with_min_lr_between_warmup_and_the_end():
    """`oreal.optim.warmup_cosine` keeps its own code only for its two ends (see its docstring)."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from oreal.optim import warmup_cosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=10, num_training_steps=100,
                                                      min_lr_rate=0.1).lr_lambdas[0]
    for s in range(10, 101):
        assert warmup_cosine(s, 10, 100, 0.1) == pytest.approx(ref(s), abs=1e-12), s
    assert ref(0) == 0.0 and warmup_cosine(0, 10, 100, 0.1) == 0.1  # the first step learns here
    assert warmup_cosine(150, 10, 100, 0.1) == pytest.approx(0.1) and ref(150) > 0.5  # past the end: the floor


def test_auto_threads_take_the_free_cores(monkeypatch):
    from oreal.training import threads
    from oreal.training.threads import auto_threads, busy_fraction

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert auto_threads(cores=2, busy=0.03) == 2  # idle: both cores
    assert auto_threads(cores=2, busy=0.55) == 1  # another process holds one
    assert auto_threads(cores=2, busy=1.0) == 1  # never fewer than one
    assert auto_threads(cores=16, busy=0.2) == 13
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert auto_threads(cores=16, busy=0.0) == 4  # torchrun: the cores are shared among the ranks
    # busy_fraction: the busy share of the jiffies that passed in the window, read from /proc/stat
    ticks = iter([(100, 1000), (160, 1200)])
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(ticks))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert busy_fraction(0.05) == pytest.approx(60 / 200)
    monkeypatch.setattr(threads, "_cpu_times", lambda: None)  # no /proc/stat: the load average per CPU
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    assert busy_fraction() == 0.75



class _CaptureTokenWeights(Callback):
    """A copy of the credit model as it was before its step (an optimiser hook), and the batch and
    the token weights the policy loss was handed (the public `on_token_weights` hook)."""

    def __init__(self):
        self.before, self.used = {}, []

    def attach(self, tr):
        import copy

        tr.credit.opt.register_step_pre_hook(lambda *a: self.before.update(rm=copy.deepcopy(tr.credit.model)) and None)
        tr.callbacks.append(self)
        return self.before, self.used

    def on_token_weights(self, trainer, batch, rollouts, weights, scores):
        self.used.append((batch, weights.clone()))


@pytest.mark.parametrize("after", [False, True])
def test_token_weights_come_from_the_rm_before_or_after_its_step(tiny_run, verifier, tmp_path, after):
    """The reference weights the policy loss with the token RM's scores from before its step on
    the batch; `algo.weights_after_credit_step` uses a fresh forward after it (hindsight)."""
    from oreal import algo

    cfg = _cfg(tiny_run, tmp_path / "run", "steps=1", "algo.actor_freeze_steps=0", "batch_questions=8",
               "algo.credit=logprob", "algo.credit_init=[10,1]", f"algo.weights_after_credit_step={str(after).lower()}")
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    before, used = _CaptureTokenWeights().attach(tr)
    m = tr.step().metrics
    assert m["actor_updated"] and used
    for mb, w in used:
        rm = tr.credit.model if after else before["rm"]
        with torch.no_grad():
            expect = algo.token_importance_weights(rm.scores(mb.ids, mb.attn, mb.targets), mb.mask,
                                                   mb.positive, cfg.algo.tau)
            other = algo.token_importance_weights((before["rm"] if after else tr.credit.model).scores(
                mb.ids, mb.attn, mb.targets), mb.mask, mb.positive, cfg.algo.tau)
        assert torch.allclose(w, expect, atol=1e-6)
        assert not torch.allclose(w, other, atol=1e-4)  # the RM's step did change the weights


def test_token_weights_on_negatives_leave_every_positive_token_at_one(tiny_run, verifier, tmp_path):
    """`algo.token_weights_on=negatives`: the policy loss gets weight 1 on every token of a
    positive and the RM's thresholded weights on the negatives (the demo's setting)."""
    from oreal import algo

    cfg = _cfg(tiny_run, tmp_path / "run", "steps=1", "algo.actor_freeze_steps=0", "batch_questions=8",
               "algo.credit=logprob", "algo.credit_init=[10,1]", "algo.token_weights_on=negatives")
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    before, used = _CaptureTokenWeights().attach(tr)
    assert tr.step().metrics["actor_updated"] and used
    for mb, w in used:
        with torch.no_grad():
            both = algo.token_importance_weights(before["rm"].scores(mb.ids, mb.attn, mb.targets), mb.mask,
                                                 mb.positive, cfg.algo.tau)
        pos = mb.positive.bool()
        assert pos.any() and (~pos).any()
        assert torch.equal(w[pos], mb.mask[pos].float())
        assert torch.allclose(w[~pos], both[~pos], atol=1e-6)
        assert (both[pos] < 1).any()  # the RM would have weighted the positives: the setting matters


def test_overlong_mask_keeps_cut_responses_out_of_the_batch_and_clip_frac_is_logged(tiny_run, verifier, tmp_path):
    """`algo.overlong=mask` (DAPO's overlong filtering): every rank knows which of the [B, K]
    responses were cut at max_new_tokens, and none of them reaches the batch, its sums or its
    counts; `incorrect` trains them as negatives. A ratio objective logs clip_frac (0 with one update
    per batch: the ratio is 1)."""
    seen = []

    class Look(Callback):
        def on_token_weights(self, trainer, batch, rollouts, weights, scores):
            seen.append((list(batch.rows), rollouts))

    for overlong in ("mask", "incorrect"):
        cfg = _cfg(tiny_run, tmp_path / overlong, "algo.name=dapo", "algo.filter=false", "algo.refill_rounds=0", f"algo.overlong={overlong}",
                   "steps=1", "batch_questions=8", "sampling.max_new_tokens=16", "algo.actor_freeze_steps=0")
        tr = Trainer(cfg, verifier, log=lambda *a: None, callbacks=[Look()])
        m = tr.step().metrics
        rows, roll = seen[-1]
        cut = roll.cut
        assert torch.equal(cut, torch.tensor([[not r.finished for r in g] for g in roll.groups]))
        assert 0 < int(cut.sum()) == m["unfinished"] < cut.numel()  # some cut, some not
        finished = [(b, k) for b in range(8) for k in range(4) if not cut[b, k]]
        assert rows == (finished if overlong == "mask" else [(b, k) for b in range(8) for k in range(4)])
        assert m["selected"] == len(rows) and m["clip_frac"] == 0.0
        tr.close()
