"""Rollouts ahead (`max_staleness`): batches sampled by a rollout worker process from weights at most S
steps old, a kill at any moment resumed to the bit, a worker that dies or hangs restarted."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from oreal import checkpoint as ckpt
from oreal.data import curriculum, save_problems
from oreal.errors import ConfigError, TrainingError
from oreal.models import load_policy, load_tokenizer, resolve_model_path
from oreal.recipes.train import Trainer, train
from oreal.rollout import SamplingConfig, make_engine
from oreal.rollout.worker import Sampled, WorkerSpec
from oreal.training.ahead import Request, RolloutsAhead, admit, merge, split_prompts, worker_spec
from oreal.training.config import build_config

STEPS = 6
CFG = {
    "policy": "default", "eval_data": None, "steps": STEPS, "batch_questions": 4, "samples": 4, "micro_batch": 5,
    "threads": 1, "save_every": 2, "keep_last": 2, "verifier_workers": 1, "dump_per_step": 2,
    "algo": {"actor_freeze_steps": 1}, "optim": {"lr": 1e-3, "credit_lr": 1e-3, "warmup": 0},
    "sampling": {"max_new_tokens": 40, "top_p": 1.0}, "prompt": {"use_chat_template": False, "system": None},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ahead")
    save_problems(curriculum.generate(200, "train", seed=0), d / "train.jsonl")
    (d / "cfg.yaml").write_text(yaml.safe_dump({**CFG, "data": str(d / "train.jsonl")}))
    return d


def _cfg(data, out, *extra):
    return build_config(str(data / "cfg.yaml"), [f"out={out}", *extra])


# --------------------------------------------------------------------------- the pure parts


def test_admission_refuses_a_batch_older_than_the_staleness():
    admit(step=3, version=1, staleness=1)  # sampled after step 1, trained at step 3: one step old
    admit(step=1, version=0, staleness=0)
    with pytest.raises(TrainingError, match="more than max_staleness=1"):
        admit(step=4, version=1, staleness=1)


def test_a_batch_is_split_among_workers_and_joined_in_their_order():
    assert split_prompts(5, 2) == [(0, 2), (2, 5)]
    parts = [Sampled(3, 1, [["a"], ["b"]], 1.0, worker=1), Sampled(3, 1, [["c"]], 2.0, worker=2)]
    joined = merge(parts)
    assert joined.groups == [["a"], ["b"], ["c"]] and joined.seconds == 2.0 and joined.version == 1
    with pytest.raises(TrainingError, match="from versions"):
        merge([parts[0], Sampled(3, 2, [], 1.0, worker=2)])


def test_the_settings_are_checked_before_anything_starts(data, tmp_path):
    with pytest.raises(ConfigError, match="max_staleness: must be >= 0"):
        _cfg(data, tmp_path, "max_staleness=-1")
    with pytest.raises(ConfigError, match="refill_rounds is not supported yet"):
        _cfg(data, tmp_path, "max_staleness=1", "algo.name=dapo")
    with pytest.raises(ConfigError, match="weigh the stale tokens twice"):
        _cfg(data, tmp_path, "max_staleness=1", "algo.tis_cap=2")
    with pytest.raises(ConfigError, match="return_logprobs=true"):
        _cfg(data, tmp_path, "max_staleness=1", "sampling.return_logprobs=false")
    cfg = _cfg(data, tmp_path, "max_staleness=1", "rollout_workers=2")
    spec = worker_spec(cfg, "/m", world=1)
    assert spec.devices == ("cpu", "cpu") and spec.engine == "hf_sampler" and spec.threads == 1
    one = worker_spec(_cfg(data, tmp_path, "max_staleness=1", "rollout_device=cpu", "rollout_threads=2"), "/m", 1)
    assert one.devices == ("cpu",) and one.threads == 2
    gpu = _cfg(data, tmp_path, "max_staleness=1", "rollout_workers=2")
    gpu.device = "cuda"  # the GPUs after the trainer's ranks, one a worker (not run here: no GPU)
    assert worker_spec(gpu, "/m", world=4).devices == ("cuda:4", "cuda:5")


def test_the_ahead_state_of_a_checkpoint_round_trips():
    spec = WorkerSpec("/m", "hf_sampler", "float32", ("cpu",), 1, 0)
    a = RolloutsAhead(1, spec, 2, SamplingConfig(max_new_tokens=4), main=False)
    q = curriculum.generate(2, "train", seed=0)
    a.requests = {3: Request(3, q, 0, ["p0", "p1"], [7, 8], 1), 4: Request(4, q[:1], 1, ["p0"], [9], 2)}
    from oreal.rollout.engine import Rollout

    a.ready = {3: Sampled(3, 1, [[Rollout(0, 0, [1], [2, 3], "x", True, [-0.5, -0.25])]], 0.1)}
    b = RolloutsAhead(1, spec, 2, SamplingConfig(max_new_tokens=4), main=True)
    b.load_state_dict(a.state_dict())
    assert b.requests == a.requests and b.ready[3].groups == a.ready[3].groups and b.ready[3].version == 1
    other = RolloutsAhead(1, spec, 2, SamplingConfig(max_new_tokens=4), main=False)
    other.load_state_dict(a.state_dict())
    assert other.requests == a.requests and not other.ready  # rank 0 sends the batches
    with pytest.raises(ckpt.CheckpointError, match="written with max_staleness=1"):
        RolloutsAhead(2, spec, 2, SamplingConfig(max_new_tokens=4), main=True).load_state_dict(a.state_dict())


# --------------------------------------------------------------------------- one worker


def test_a_worker_samples_what_the_trainers_engine_samples_from_the_same_weights():
    """The worker gets the weights by broadcast and each prompt's seed: its batch equals the trainer's
    own engine's, token for token."""
    d = resolve_model_path("default")
    model, tok = load_policy(d), load_tokenizer(d)
    with torch.no_grad():
        for p in model.parameters():  # weights the worker cannot have read from disk
            p.add_(0.01 * torch.randn_like(p))
    sampling = SamplingConfig(max_new_tokens=12)
    prompts, seeds = ["Question: 2 + 3 = ?\nAnswer:", "Question: 7 * 6 = ?\nAnswer:", "1+1="], [11, 12, 13]
    a = RolloutsAhead(0, WorkerSpec(d, "hf_sampler", "float32", ("cpu",), 1, 0), 3, sampling, main=True)
    try:
        a.start()
        a.publish(5, model.named_parameters())
        a.submit(Request(6, [], 0, prompts, seeds, 5))
        got = a.take(6)
    finally:
        a.close()
    assert got.version == 5 and got.restarts == 0
    torch.set_num_threads(1)  # the worker's
    mine = make_engine("hf_sampler", model, tok).sample(prompts, 3, sampling, seed=seeds)
    assert [[r.response_ids for r in g] for g in got.groups] == [[r.response_ids for r in g] for g in mine]
    # the log-probs agree to round-off (another process may take another kernel path in the last bit)
    theirs, ours = ([torch.tensor(r.logprobs) for g in b for r in g] for b in (got.groups, mine))
    assert all(torch.allclose(x, y, rtol=0, atol=1e-5) for x, y in zip(theirs, ours))


# --------------------------------------------------------------------------- in a run


def test_staleness_zero_is_the_one_loop_to_the_bit(data, verifier, tmp_path):
    def run(*extra):
        tr = Trainer(_cfg(data, tmp_path / "x", "steps=2", *extra), verifier, log=lambda *a: None)
        try:
            assert tr.ahead is None
            return [tr.step() for _ in range(2)]
        finally:
            tr.close()
    a, b = run(), run("max_staleness=0")
    drop = {"seconds", "tokens_per_s", "rollout_seconds", "sample_seconds", "grade_seconds", "credit_seconds",
            "policy_seconds", "optim_seconds", "elapsed", "eta"}
    for x, y in zip(a, b):
        assert {k: v for k, v in x.metrics.items() if k not in drop} == {k: v for k, v in y.metrics.items() if k not in drop}
        assert x.trajectories == y.trajectories


def test_each_step_trains_on_a_batch_sampled_s_steps_before(data, verifier, tmp_path):
    """S = 2: steps 1-3 train on the starting weights' batches, then each on weights two steps old; the
    ratio objective's pi_old is the worker's log-probs, so its clip binds on stale tokens."""
    cfg = _cfg(data, tmp_path / "run", "max_staleness=2", "steps=5", "algo.name=grpo", "algo.clip_low=0.02",
               "algo.clip_high=0.02", "optim.lr=3e-3", "save_every=0")
    result = train(cfg, verifier, log=lambda *a: None)
    result.trainer.close()
    rows = result.history
    assert [r["staleness"] for r in rows] == [0, 1, 2, 2, 2]
    assert all(r["worker_restarts"] == 0 and r["worker_seconds"] > 0 for r in rows)
    assert rows[0]["clip_frac"] == 0 or rows[0]["clip_frac"] is None  # the starting weights sampled it
    assert max(r["clip_frac"] or 0 for r in rows[2:]) > 0


def test_a_worker_that_dies_is_restarted_and_the_run_goes_on(data, verifier, tmp_path, monkeypatch):
    monkeypatch.setenv("OREAL_FAULT", "worker_sample@3")  # the first worker kills itself sampling step 3's batch
    logs = []
    result = train(_cfg(data, tmp_path / "run", "max_staleness=1", "steps=4", "save_every=0"), verifier, log=logs.append)
    result.trainer.close()
    assert [r["worker_restarts"] for r in result.history] == [0, 0, 1, 0]
    assert any("died" in str(line) and "restarting the rollout workers" in str(line) for line in logs)
    assert [r["staleness"] for r in result.history][3] <= 1


@pytest.mark.slow
@pytest.mark.exhaustive
def test_two_workers_sample_the_batch_one_worker_samples(data, verifier, tmp_path):
    """Each worker samples its share of a batch with each prompt's own seed: the run does not depend on
    how many workers share it."""
    runs = []
    for n in (1, 2):
        cfg = _cfg(data, tmp_path / f"w{n}", "max_staleness=1", "steps=3", "save_every=0", f"rollout_workers={n}")
        result = train(cfg, verifier, log=lambda *a: None)
        result.trainer.close()
        runs.append(result)
    for a, b in zip(*(r.history for r in runs)):
        assert (a["reward"], a["response_tokens"], a["loss"]) == (b["reward"], b["response_tokens"], b["loss"])


@pytest.mark.slow
def test_a_worker_that_hangs_is_noticed_within_the_timeout(data, verifier, tmp_path, monkeypatch):
    monkeypatch.setenv("OREAL_FAULT", "worker_hang@2")
    logs = []
    cfg = _cfg(data, tmp_path / "run", "max_staleness=1", "steps=3", "save_every=0", "rollout_timeout=4")
    result = train(cfg, verifier, log=logs.append)
    result.trainer.close()
    assert [r["worker_restarts"] for r in result.history] == [0, 1, 0]
    assert any("no progress for 4 s" in str(line) for line in logs)
    assert result.history[1]["wait_seconds"] >= 4


# --------------------------------------------------------------------------- killed, resumed


def _run(data, out, *overrides, fault=None):
    env = {k: v for k, v in os.environ.items() if k != "OREAL_FAULT"}
    if fault:
        env["OREAL_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "oreal.cli", "train", str(data / "cfg.yaml"), f"out={out}",
                           *overrides], env=env, capture_output=True, text=True, timeout=300)


def _same_bits(a: Path, b: Path) -> None:
    for m in ("policy", "credit"):
        wa, wb = (load_file(str(r / "final" / m / "model.safetensors")) for r in (a, b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), m
    timing = {"seconds", "tokens_per_s", "rollout_seconds", "sample_seconds", "grade_seconds", "credit_seconds",
              "policy_seconds", "optim_seconds", "elapsed", "eta", "wait_seconds", "worker_seconds"}
    rows = [[{k: v for k, v in json.loads(x).items() if k not in timing}
             for x in (r / "metrics.jsonl").read_text().splitlines()] for r in (a, b)]
    assert [r["step"] for r in rows[1]] == list(range(1, STEPS + 1))
    assert rows[0] == rows[1]
    assert (a / "trajectories.jsonl").read_text() == (b / "trajectories.jsonl").read_text()


@pytest.fixture(scope="module")
def references(data):
    """The uninterrupted run at each staleness, made once when a test first asks for it."""
    made = {}

    def get(s: int) -> Path:
        if s not in made:
            out = data / f"uninterrupted-{s}"
            p = _run(data, out, f"max_staleness={s}")
            assert p.returncode == 0, p.stderr[-3000:]
            made[s] = out
        return made[s]
    return get


@pytest.mark.parametrize("s,fault", [
    (1, "rollout_wait@3"),  # the worker mid-sample, the trainer waiting for it (the queue empty)
    pytest.param(1, "weights_push@3", marks=[pytest.mark.slow, pytest.mark.exhaustive]),  # a weight broadcast in flight
    pytest.param(2, "checkpoint_write@4", marks=[pytest.mark.slow, pytest.mark.exhaustive]),  # mid-save, the next S batches in it
    pytest.param(2, "step_end@5", marks=[pytest.mark.slow, pytest.mark.exhaustive]),  # the queue full: S batches sampled ahead
])
def test_a_kill_at_any_moment_resumes_to_the_same_bits(data, references, s, fault, tmp_path):
    ref = references(s)
    out = tmp_path / "run"
    p = _run(data, out, f"max_staleness={s}", fault=fault)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert ckpt.find_latest(out / "checkpoints") is not None
    p = _run(data, out, f"max_staleness={s}", "resume=auto")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in p.stdout
    _same_bits(ref, out)


@pytest.mark.slow
@pytest.mark.exhaustive
def test_a_checkpoint_resumes_only_at_its_staleness(data, references, tmp_path):
    """Its batches were drawn and sampled for its S: another S (0 included) is refused, not run."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(references(1), out)
    for s in (0, 2):
        p = _run(data, out, f"max_staleness={s}", "resume=auto", "steps=8")
        assert p.returncode != 0 and "written with max_staleness=1" in p.stderr, p.stderr[-2000:]
