"""Runs that survive: kill -9 anywhere, resume, and land on the same bits as a run never stopped;
damaged checkpoints are skipped; NaNs, all-filtered steps, signals and full disks are handled."""
import errno
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

from cli_helpers import AS_FOREGROUND
from oreal import checkpoint as ckpt
from oreal.errors import RunDirError
from oreal.data import Problem, curriculum, save_problems
from oreal.recipes.train import Trainer, TrainingError, train
from oreal.training.config import build_config

STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    save_problems(curriculum.generate(200, "train", seed=0), d / "train.jsonl")
    cfg = {
        "policy": "default", "data": str(d / "train.jsonl"), "eval_data": None, "steps": STEPS,
        "batch_questions": 4, "samples": 4, "micro_batch": 5, "threads": 1, "save_every": 2,
        "keep_last": 2, "verifier_workers": 1, "dump_per_step": 2,
        "algo": {"actor_freeze_steps": 1},
        "optim": {"lr": 1e-3, "credit_lr": 1e-3, "warmup": 0},
        "sampling": {"max_new_tokens": 40, "top_p": 1.0},
        "prompt": {"use_chat_template": False, "system": None},
    }
    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return d


def _run(data, out, *overrides, fault=None, check=True):
    env = {k: v for k, v in os.environ.items() if k != "OREAL_FAULT"}
    if fault:
        env["OREAL_FAULT"] = fault
    p = subprocess.run([sys.executable, "-m", "oreal.cli", "train", str(data / "cfg.yaml"), f"out={out}",
                        *overrides], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def _weights(run: Path) -> dict:
    return {m: load_file(str(run / "final" / m / "model.safetensors")) for m in ("policy", "credit")}


def _assert_same_bits(a: Path, b: Path):
    wa, wb = _weights(a), _weights(b)
    for m in wa:
        assert wa[m].keys() == wb[m].keys()
        for k in wa[m]:
            assert torch.equal(wa[m][k], wb[m][k]), (m, k)
    rows = [[json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in (a, b)]
    assert [r["step"] for r in rows[1]] == list(range(1, STEPS + 1))
    for key in ("reward", "selected", "loss", "credit_loss"):
        assert [r[key] for r in rows[0]] == [r[key] for r in rows[1]], key


@pytest.fixture(scope="module")
def reference(data):
    out = data / "uninterrupted"
    _run(data, out)
    return out


def test_sigkill_at_a_step_boundary_then_resume_is_bitwise_identical(data, reference):
    out = data / "killed_at_step"
    p = _run(data, out, fault="step_end@3", check=False)
    assert p.returncode == -signal.SIGKILL
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [2]
    _run(data, out, "resume=auto")
    _assert_same_bits(reference, out)


def test_sigkill_during_a_checkpoint_write_then_resume_is_bitwise_identical(data, reference):
    out = data / "killed_in_save"
    p = _run(data, out, fault="checkpoint_write@4", check=False)
    assert p.returncode == -signal.SIGKILL
    root = out / "checkpoints"
    assert list(root.glob(".tmp-step_0000004-*")), "the interrupted save left its temporary directory"
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2]  # never renamed into place
    assert ckpt.validate(root / "step_0000002") is None
    _run(data, out, "resume=auto")
    _assert_same_bits(reference, out)
    assert not list(root.glob(".tmp-*"))


def test_damaged_newest_checkpoint_falls_back_with_a_warning(data, reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    root = out / "checkpoints"
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [4, 6]
    weights = root / "step_0000006" / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.warns(UserWarning, match="step_0000006 is damaged.*does not match"):
        assert ckpt.find_latest(root) == root / "step_0000004"
    (root / "step_0000004" / "manifest.json").unlink()
    with pytest.warns(UserWarning):
        assert ckpt.find_latest(root) is None
    assert "no manifest" in ckpt.validate(root / "step_0000004")


def test_resume_from_the_previous_checkpoint_after_corruption_is_still_exact(data, reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    state = out / "checkpoints" / "step_0000006" / "trainer_state.pt"
    state.write_bytes(b"garbage")
    p = _run(data, out, "resume=auto")
    assert "step_0000006 is damaged" in p.stdout + p.stderr
    assert "resumed from" in p.stdout and "step_0000004" in p.stdout
    _assert_same_bits(reference, out)


def test_checkpoints_hold_plain_hf_directories_and_everything_to_resume(reference):
    path = ckpt.find_latest(reference / "checkpoints")
    assert path.name == "step_0000006"
    from oreal.models import load_policy, load_token_head

    load_policy(str(path / "policy"))
    load_token_head(str(path / "credit"))
    st = ckpt.load_trainer_state(path)
    assert {"opt", "sched", "credit_opt", "credit_sched", "sampler", "select_gen", "rng", "step"} <= set(st)
    assert set(st["rng"]) >= {"python", "numpy", "torch"} and st["step"] == STEPS


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits(data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "oreal.cli", "train", str(data / "cfg.yaml"), f"out={out}",
                             "steps=1000", "save_every=0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step    2/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, "".join(lines) + rest
    assert "SIGTERM: finishing this step" in rest and "checkpoint written" in rest
    (step, path), = ckpt.list_checkpoints(out / "checkpoints")
    assert step >= 2 and ckpt.validate(path) is None
    assert not (out / "final").exists()
    p = _run(data, out, "resume=auto", f"steps={step + 1}", "save_every=0")
    assert f"resumed from {path}" in p.stdout
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, step + 2))


def test_a_second_ctrl_c_stops_at_once_with_one_line(data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "oreal.cli", "train", str(data / "cfg.yaml"), f"out={out}",
                             "steps=1000", "save_every=0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **AS_FOREGROUND)
    for line in proc.stdout:
        if line.startswith("step    2/"):
            proc.send_signal(signal.SIGINT)
            break
    first = proc.stdout.readline()  # the handler's message: it says what a second Ctrl-C does
    assert "SIGINT: finishing this step" in first and "Ctrl-C again stops at once" in first
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["oreal train: interrupted; nothing more was saved"], err


# --------------------------------------------------------------------------- in-process failure paths


def _cfg(data, out, *extra):
    return build_config(str(data / "cfg.yaml"), [f"out={out}", "threads=1", *extra])  # fixed: runs compared bit for bit


def test_nonfinite_loss_skips_the_update_then_stops_the_run(data, verifier, tmp_path, monkeypatch):
    from oreal.algo import objective

    cfg = _cfg(data, tmp_path / "run", "algo.actor_freeze_steps=0", "max_nonfinite=2", "save_every=0")
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    before = {k: v.clone() for k, v in tr.policy.state_dict().items()}
    real = objective.negative_pg_terms
    monkeypatch.setattr(objective, "negative_pg_terms", lambda *a, **k: real(*a, **k) * float("nan"))
    m = tr.step().metrics
    while m["skipped"]:  # a step with nothing selected never reaches the loss
        m = tr.step().metrics
    assert m["nonfinite"] is True and m["actor_updated"] is False and m["loss"] is None
    assert all(torch.equal(v, before[k]) for k, v in tr.policy.state_dict().items())
    assert all(p.grad is None for p in tr.policy.parameters())
    assert m["credit_loss"] is not None  # the token RM's own loss was finite: it still learned
    with pytest.raises(TrainingError, match="2 steps in a row had a non-finite"):
        for _ in range(5):
            tr.step()


def test_a_step_where_every_question_is_filtered_is_skipped_and_logged(data, verifier, tmp_path):
    impossible = [Problem(id=f"q{i}", question=f"Compute {i}+1.", gold="-999") for i in range(8)]
    save_problems(impossible, tmp_path / "impossible.jsonl")
    logs = []
    cfg = _cfg(data, tmp_path / "run", f"data={tmp_path / 'impossible.jsonl'}", "steps=2",
               "algo.actor_freeze_steps=0")
    result = train(cfg, verifier, log=logs.append)
    tr, history = result.trainer, result.history
    assert all(h["skipped"] and not h["actor_updated"] for h in history)
    assert any("all 4 questions filtered out" in x for x in logs)
    assert sum("SKIPPED (all filtered)" in x for x in logs) == 2


def test_unwritable_run_dir_and_full_disk_are_clear_errors(data, verifier, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match="a_file is a file, not a directory"):
        train(_cfg(data, blocker / "run"), verifier, log=lambda *a: None)

    out = tmp_path / "run"
    tr = Trainer(_cfg(data, out, "steps=4"), verifier, log=lambda *a: None)
    tr.step(), tr.step()
    good = tr.save_checkpoint(out / "checkpoints", keep_last=2)

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    tr.step()
    with pytest.raises(ckpt.CheckpointError, match="cannot write checkpoint .*step_0000003.*No space left"):
        tr.save_checkpoint(out / "checkpoints", keep_last=2)
    assert ckpt.validate(good) is None
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_a_fresh_start_does_not_clobber_an_earlier_run(data, reference, verifier, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match="resume=auto.*overwrite=true"):
        train(_cfg(data, out), verifier, log=lambda *a: None)
    # nothing of the earlier run was touched: not its checkpoints, not its config.yaml
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_keeps_the_last_k_and_the_best_by_evaluation(data, verifier, tmp_path):
    save_problems(curriculum.generate(12, "test", seed=0), tmp_path / "test.jsonl")
    cfg = _cfg(data, tmp_path / "run", f"eval_data={tmp_path / 'test.jsonl'}", "eval_every=1", "eval_limit=12",
               "save_every=1", "keep_last=1", "steps=4")
    result = train(cfg, verifier, log=lambda *a: None)
    tr, history = result.trainer, result.history
    evals = [h["eval_pass@1"] for h in history]
    best_step = max(range(4), key=lambda i: (evals[i], -i)) + 1
    assert tr.state.best == {"step": best_step, "eval_pass@1": evals[best_step - 1]}
    kept = [s for s, _ in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert kept == sorted({best_step, 4})


def test_trajectory_dumps_carry_rewards_advantages_and_token_weights(reference):
    rows = [json.loads(x) for x in (reference / "trajectories.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} <= set(range(1, STEPS + 1)) and len(rows) <= 2 * STEPS
    sel = [r for r in rows if r["selected"]]
    assert sel, "no selected responses were dumped"
    for r in sel:
        assert {"prompt", "response", "reward", "advantage", "tokens", "weights"} <= set(r)
        assert len(r["weights"]) == len(r["tokens"])
        assert all(0.0 <= w <= 1.0 for w in r["weights"])
        assert "".join(r["tokens"]) == r["response"]


def test_trajectory_dumps_stop_at_their_size_cap(data, verifier, tmp_path):
    logs = []
    cfg = _cfg(data, tmp_path / "run", "steps=3", "dump_per_step=4", "dump_max_mb=0.002")
    train(cfg, verifier, log=logs.append)
    assert (tmp_path / "run" / "trajectories.jsonl").stat().st_size <= 0.002 * 2**20
    assert any("reached its" in x for x in logs)


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_trackers_write_offline_logs(data, verifier, tmp_path, tracker, monkeypatch):
    pytest.importorskip(tracker)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _cfg(data, tmp_path / "run", "steps=2", f"trackers=[{tracker}]")
    train(cfg, verifier, log=lambda *a: None)
    if tracker == "tensorboard":
        assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    else:
        assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_report_writes_curves_and_token_coloured_html(reference, tmp_path):
    from oreal.cli import main

    assert main(["report", str(reference), "--out", str(tmp_path / "rep")]) == 0
    pngs = {p.name for p in (tmp_path / "rep").glob("*.png")}
    assert {"reward.png", "kl.png", "entropy.png", "losses.png", "credit.png"} <= pngs
    page = (tmp_path / "rep" / "index.html").read_text()
    rows = [json.loads(x) for x in (reference / "trajectories.jsonl").read_text().splitlines()]
    weighted = [r for r in rows if r["selected"] and any(w > 0 for w in r["weights"])]
    assert weighted, "the token RM gave no token a positive weight"
    assert 'title="w=' in page and ("rgba(40,167,69," in page or "rgba(220,53,69," in page)
    assert main(["report", str(tmp_path / "nowhere")]) == 1


def test_logprob_credit_resumes_to_the_same_bits(data, verifier, tmp_path):
    """algo.credit=logprob keeps its LM and its calibration (a, b) in the checkpoint exactly."""
    cfg = _cfg(data, tmp_path / "ref", "algo.credit=logprob", "steps=3", "save_every=1", "keep_last=3")
    ref = train(cfg, verifier, log=lambda *a: None).trainer
    step2 = tmp_path / "ref" / "checkpoints" / "step_0000002"
    more = _cfg(data, tmp_path / "run", "algo.credit=logprob", "steps=3", f"resume={step2}")
    run = train(more, verifier, log=lambda *a: None).trainer
    mine, theirs = run.credit.model, ref.credit.model
    assert mine.offset.item() == theirs.offset.item() and mine.scale.item() == theirs.scale.item()
    assert theirs.offset.item() != 0.0  # the calibration did train
    for a, b, name in ((ref.policy, run.policy, "policy"), (theirs, mine, "credit")):
        a, b = a.state_dict(), b.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_a_resume_keeps_the_runs_thread_count(data, verifier, tmp_path):
    """The thread count can change the last bits, so `threads=0` on resume reuses the run's."""
    out = tmp_path / "run"
    tr = train(_cfg(data, out, "steps=2", "save_every=1"), verifier, log=lambda *a: None).trainer  # 1 thread
    torch.set_num_threads(2)
    said = []
    tr = Trainer(_cfg(data, out, "steps=3", "threads=0", "resume=auto"), verifier, log=said.append)
    tr.load_checkpoint(ckpt.find_latest(out / "checkpoints"))
    assert torch.get_num_threads() == 1 and any("as the run had" in s for s in said)


def test_an_ignored_sigint_stays_ignored_in_training_and_sigterm_is_still_handled():
    """A command started with SIGINT ignored (a shell's background job) ignores it before training,
    as Python does: training's handler must not take it back for part of the run only."""
    from oreal.training.rundir import StopOnSignal

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopOnSignal(lambda *a: None) as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stop._handle
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with StopOnSignal(lambda *a: None) as stop:
            assert signal.getsignal(signal.SIGINT) == stop._handle
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_long_responses_dump_keeps_its_head_and_tail_with_their_weights(tiny):
    """A 16k-token response would make a 0.4 MB record (and end the dumps in a few steps): the
    record keeps its first and last 2,048 tokens, their weights aligned, and says what was cut."""
    from oreal.data import Problem
    from oreal.rollout import Rollout
    from oreal.training.batch import RolloutBatch
    from oreal.training.rundir import DUMP_TOKENS, trajectory_records

    _, _, tok, _ = tiny
    n, prompt = 5000, [5, 6, 7]
    resp = [int(x) for x in torch.randint(3, len(tok), (n,), generator=torch.Generator().manual_seed(0))]
    roll = RolloutBatch([Problem("q", "1+1?", "2")], [[Rollout(0, 0, prompt, resp, "", False)]],
                        torch.zeros(1, 1), 0, 1)
    weights = torch.arange(len(prompt) + n - 1, dtype=torch.float)[None] / 10_000  # position p-1 scores token p
    rec, = trajectory_records(roll, [(0, 0)], torch.zeros(1, 1), weights, tok, step=1, limit=8)
    half = DUMP_TOKENS // 2
    assert rec["response_tokens"] == n and rec["cut"] == [half, n - half]
    assert len(rec["tokens"]) == len(rec["weights"]) == DUMP_TOKENS
    assert rec["tokens"][half] == tok.decode([resp[n - half]])
    assert rec["weights"][0] == round((len(prompt) - 1) / 10_000, 4)  # the first response token's weight
    assert rec["weights"][half] == round((len(prompt) - 1 + n - half) / 10_000, 4)
    assert f"[... {n - DUMP_TOKENS} tokens cut ...]" in rec["response"]
    assert len(json.dumps(rec)) < 150_000
