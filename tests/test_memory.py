"""Issue 39: what a run keeps in memory, shown on CPU (spies on what is kept, FSDP2 on one gloo
process) and, from the model's config alone, the plan of a run's memory by part and phase."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oreal.models import load_policy
from oreal.training.logprobs import sequence_logprobs


def test_log_probs_keep_one_hidden_state_not_every_layers():
    """The chunked log-probs asked the model for `output_hidden_states=True`, which keeps all L + 1
    hidden states until the forward returns (3.4 GB at 7B and 16k tokens without gradients) where
    only the last is used. A hook on the backbone now catches the one used: the same log-probs."""
    model = load_policy("default").eval()
    asked = []
    forward = model.forward

    def spy(*a, **kw):
        asked.append(kw.get("output_hidden_states"))
        out = forward(*a, **kw)
        asked.append(None if out.hidden_states is None else len(out.hidden_states))
        return out

    model.forward = spy
    ids = torch.randint(1, 100, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, _ = sequence_logprobs(model, ids, torch.ones_like(ids), ids[:, 1:], chunk=7, entropy=False)
        model.forward = forward
        full, _ = sequence_logprobs(model, ids, torch.ones_like(ids), ids[:, 1:], chunk=0, entropy=False)
    assert asked and all(x is None for x in asked), asked  # never asked for, never built
    assert torch.allclose(got, full, atol=1e-5)


def test_gradients_are_freed_after_every_update(tmp_path, verifier):
    """zero_grad ran at the start of each update, so the policy's and the credit model's gradients
    (a 7B's float32: 30 GB, 3.8 GB a GPU over 8) sat beside the rollout's KV cache until then."""
    from oreal.recipes.train import Trainer
    from oreal.training.config import build_config

    cfg = build_config(None, [f"out={tmp_path}", "steps=2", "batch_questions=8", "samples=4", "threads=1",
                              "sampling.max_new_tokens=32", "algo.actor_freeze_steps=0", "algo.credit=logprob",
                              "optim.lr=1e-3", "prompt.use_chat_template=false", "prompt.system=null"])
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    try:
        m = tr.step().metrics
        assert m["actor_updated"], m  # both models stepped on this batch
        for name, model in (("policy", tr.policy), ("credit", tr.credit.model)):
            kept = [n for n, p in model.named_parameters() if p.grad is not None]
            assert not kept, (name, kept[:3])
    finally:
        tr.close()


def test_a_credit_models_root_is_resharded_after_forwards_without_gradients(tmp_path):
    """Under FSDP2 the credit model's wrapper is the root; after its forwards without gradients
    (its checks, the scores after its step) nothing resharded it, so its embeddings and output
    layer (2.2 GB at 7B) stayed gathered through the policy update. One gloo process here."""
    code = r"""
import torch
from torch.distributed.tensor import DTensor
from oreal.distributed import setup
from oreal.recipes.train import Trainer
from oreal.training.config import build_config
from oreal.verify import Verifier
setup("cpu", force=True)
cfg = build_config(None, ["out=%s", "fsdp=true", "threads=1", "batch_questions=8", "samples=4",
                          "sampling.max_new_tokens=32", "optim.lr=1e-3", "algo.credit=logprob", "algo.weights_after_credit_step=true",
                          "algo.actor_freeze_steps=0", "prompt.use_chat_template=false", "prompt.system=null"])
def root_sharded(model):
    return all(isinstance(p, DTensor) for p in model.parameters(recurse=False)) and \
        all(isinstance(p, DTensor) for n, p in model.named_parameters() if "layers" not in n)
with Verifier(workers=1) as v:
    tr = Trainer(cfg, v, log=lambda *a: None)
    after_checks = root_sharded(tr.credit.model)
    m = tr.step().metrics
    print("RESULT", after_checks, root_sharded(tr.credit.model), m["selected"])
    tr.close()
""" % (tmp_path,)
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "RANK", "WORLD_SIZE", "MASTER_ADDR")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")][-1]
    assert line.split()[1:3] == ["True", "True"] and int(line.split()[3]) > 0, line  # the step scored a batch


def test_the_reference_and_the_credit_model_take_the_policys_attention(tmp_path, verifier):
    """The reference and the credit model were reloaded from a snapshot with transformers' default
    attention (sdpa) whatever the policy's, and no setting chose it: pack=auto (packed only under
    flash-attention) could not be reached from a config. attn_implementation sets all three, and
    a built model's own attention carries over to the copies."""
    from oreal.models import load_tokenizer
    from oreal.recipes.train import Trainer
    from oreal.training.config import build_config

    common = [f"out={tmp_path}", "steps=1", "batch_questions=2", "samples=2", "threads=1",
              "sampling.max_new_tokens=8", "algo.credit=logprob"]

    def attentions(tr):
        return [m.config._attn_implementation for m in (tr.policy, tr.ref, tr.credit.model.inner)]

    tr = Trainer(build_config(None, [*common, "attn_implementation=eager"]), verifier, log=lambda *a: None)
    try:
        assert attentions(tr) == ["eager"] * 3
    finally:
        tr.close()
    built = load_policy("default", attn="eager")
    tr = Trainer(build_config(None, common), verifier, log=lambda *a: None, policy=built,
                 tokenizer=load_tokenizer("default"))
    try:
        assert attentions(tr) == ["eager"] * 3
    finally:
        tr.close()


def test_the_engines_check_runs_each_row_alone_and_as_many_forwards_on_every_rank():
    """The vLLM check after a weight push ran its rows padded to the longest in one forward (4 x 16k
    tokens beside the awake KV cache), and a rank with no checkable rows returned before the
    forward every FSDP2 rank must run (a hang). Now: one row per forward, and `forwards` of them
    on every rank, 2-token ones where it has fewer rows; the log-probs as before."""
    from oreal.rollout import Rollout
    from oreal.rollout.vllm_engine import trainer_logprobs

    model = load_policy("default").eval()
    g = torch.Generator().manual_seed(3)
    rows = [Rollout(0, i, torch.randint(3, 150, (p,), generator=g).tolist(),
                    torch.randint(3, 150, (r,), generator=g).tolist(), "", True)
            for i, (p, r) in enumerate(((5, 9), (8, 3)))]
    shapes = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                             with_kwargs=True)
    got = trainer_logprobs(model, rows, 0, forwards=4)
    assert shapes == [(1, 14), (1, 11), (1, 2), (1, 2)]  # each row alone, then 2 in step with other ranks
    shapes.clear()
    assert trainer_logprobs(model, [], 0, forwards=3) == [] and shapes == [(1, 2)] * 3
    handle.remove()
    with torch.no_grad():  # the same numbers as one padded forward of the rows
        for r, lp in zip(rows, (got[:9], got[9:])):
            ids = torch.tensor([r.prompt_ids + r.response_ids])
            ref = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
            assert torch.allclose(torch.tensor(lp), ref[len(r.prompt_ids) - 1:], atol=1e-5)


def test_the_low_precision_logit_check_allows_the_rounding_of_large_logits():
    """The first-call check held bf16 log-probs to 0.05, under one bf16 unit in the last place of a
    logit of 16 or more (0.125): a correct model could be stopped. Two units of the largest logit."""
    from oreal.training.logprobs import logprob_tolerance

    assert logprob_tolerance(torch.zeros(2, 3)) == 1e-4
    assert logprob_tolerance(torch.full((2, 3), 2.0, dtype=torch.bfloat16)) == 0.05
    assert logprob_tolerance(torch.tensor([[20.0, -3.0]], dtype=torch.bfloat16)) == 2 * 0.0078125 * 20


def test_float32_on_a_gpu_takes_tf32_and_the_cpu_stays_strict():
    """Without mixed precision every float32 product on a GPU ran in strict float32 (no TF32),
    several times slower; on CPU nothing changes (the demo's numbers are bit for bit)."""
    from oreal.training.config import TrainConfig, matmul_precision

    assert matmul_precision(TrainConfig(device="cuda")) == "high"
    assert matmul_precision(TrainConfig(device="cuda", tf32=False)) == "highest"
    assert matmul_precision(TrainConfig(device="cpu")) == "highest"


def test_activation_checkpointing_takes_effect_and_changes_no_number(tmp_path, verifier):
    """transformers checkpoints a layer only in train mode, and the trainer's models came from
    from_pretrained in eval mode: activation_checkpointing=true kept every layer's activations
    (the same peak memory with and without it). Now the layers keep their inputs only, and the
    step is the same: losses and gradients."""
    from step_helpers import assert_same_step, step_grads

    saved = {}

    def run(flag):
        from oreal.training.policy import PolicyStage

        seen = {}
        real = PolicyStage.logprobs

        def spy(self, model, x, entropy=True):
            if model is not self.policy or not torch.is_grad_enabled():
                return real(self, model, x, entropy)
            with torch.autograd.graph.saved_tensors_hooks(
                    lambda t: seen.__setitem__(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) or t,
                    lambda t: t):
                return real(self, model, x, entropy)

        PolicyStage.logprobs = spy
        try:
            out = step_grads(tmp_path / str(flag), verifier, f"activation_checkpointing={str(flag).lower()}")
        finally:
            PolicyStage.logprobs = real
        saved[flag] = sum(seen.values())
        return out

    plain, ckpt = run(False), run(True)
    assert_same_step(plain, ckpt, ["loss", "loss_pos", "loss_neg", "loss_kl", "kl", "entropy"])
    assert saved[True] < saved[False] / 3, saved  # the layers' inputs only (weights aside, which both keep)


# -- the plan ------------------------------------------------------------------------------------
def _shape(**kw):
    from oreal.plan import ModelShape

    base = dict(params=7_000_000_000, root=1_090_000_000, head=545_000_000, embed=545_000_000, largest=545_000_000, layers=28,
                hidden=3584, heads=28, vocab=152064, kv_per_token=2 * 28 * 4 * 128, linear_in_out=28 * 90_000,
                max_positions=32768, moe=False)
    return ModelShape(**{**base, **kw})


def test_the_plans_states_by_hand_for_a_sharded_mixed_precision_run():
    """Every state part of a 7B-shaped run on 8 GPUs (FSDP2, bf16 compute with float32 masters, the
    log-prob credit) from its shape: float32 weights, gradients and two AdamW states sharded 8
    ways, the reference, the credit model; the root gathered in bf16 and its float32 gradient
    twice (the reduce-scatter's copy); a vLLM push gathers the root and one layer at a time in bf16
    (the engine's dtype) and copies out one parameter at a time."""
    from oreal.plan import GiB, plan_run
    from oreal.training.config import TrainConfig

    cfg = TrainConfig(device="cuda", fsdp=True, mixed_precision=True, algo={"credit": "logprob"},
                      sampling={"max_new_tokens": 1024}, micro_batch=4)
    cfg.engine = "vllm"  # set after validation: vLLM need not be installed to plan for it
    P = 7_000_000_000
    p = plan_run(cfg, _shape(), "{}", gpus=8, gpu_memory_gb=80, prompt_tokens=512, activations=(0.0,) * 6)
    assert p.parts["policy weights"] == P * 4 / 8 and p.parts["policy gradients"] == P * 4 / 8
    assert p.parts["policy optimiser"] == 2 * 4 * P / 8 and p.parts["reference weights"] == P * 4 / 8
    assert p.parts["credit weights"] == P * 4 / 8 and p.parts["credit optimiser"] == 2 * 4 * P / 8
    assert p.parts["FSDP root gathered"] == 1_090_000_000 * 2 and p.parts["FSDP root gradient"] == 2 * 1_090_000_000 * 4
    assert p.parts["engine weights"] == P * 2  # vLLM's own bf16 copy, whole on each rank
    assert p.parts["engine KV cache"] == 0.35 * 80 * GiB - P * 2
    push = p.phases["weight push"]
    assert push["one gathered parameter"] == 545_000_000 * 2 and push["push: root gathered"] == 1_090_000_000 * 2
    assert push["push: a layer gathered"] == (P - 1_090_000_000) / 28 * 2
    assert p.tokens == 4 * (512 + 1024)  # micro_batch rows of the longest prompt + max_new_tokens
    # vLLM sleeps through training on a GPU: neither its weights nor its KV cache in those phases
    assert "engine weights" not in p.phases["policy update"] and "engine KV cache" in p.phases["rollout"]
    # one update per batch keeps no log-probs; several keep log pi_old and log pi_ref of every row the
    # rank trains (64 questions / 8 ranks x 16 samples of 512 + 1024 tokens, float32) to the last step
    assert "cached old and reference log-probs" not in p.phases["policy update"]
    cfg.algo.mini_batches = 4
    p = plan_run(cfg, _shape(), "{}", gpus=8, gpu_memory_gb=80, prompt_tokens=512, activations=(0.0,) * 6)
    cached = 2 * 4 * (64 // 8 * 16) * (512 + 1024)
    for phase in ("policy update", "policy backward's end", "policy step"):
        assert p.phases[phase]["cached old and reference log-probs"] == cached, phase
    assert "cached old and reference log-probs" not in p.phases["rollout"]


def test_a_plan_that_does_not_fit_names_the_phase_the_part_and_the_setting():
    from oreal.plan import plan_run
    from oreal.training.config import TrainConfig

    cfg = TrainConfig(device="cuda", micro_batch=64, sampling={"max_new_tokens": 16384})
    # 64 rows of 16.9k tokens, 60 kB a token a layer: the policy's activations, far past 80 GB
    p = plan_run(cfg, _shape(), "{}", gpus=1, gpu_memory_gb=80, prompt_tokens=512,
                 activations=(0.0, 1000.0, 0.0, 0.0, 60_000.0, 0.0))
    assert not p.fits()
    line = p.refusal()
    assert "policy update phase" in line and "policy activations" in line and "micro_batch_tokens" in line, line
    assert "\n" not in line
    ok = plan_run(cfg, _shape(params=1_000_000, root=10_000, head=0, largest=5000), "{}", gpus=1, gpu_memory_gb=80,
                  prompt_tokens=16, tokens=1000, activations=(0.0, 1000.0, 0.0, 0.0, 1000.0, 0.0))
    assert ok.fits() and ok.refusal() is None


def test_micro_batch_tokens_auto_takes_the_largest_budget_that_fits(monkeypatch):
    from oreal import plan
    from oreal.training.config import TrainConfig

    monkeypatch.setattr(plan, "activation_model", lambda *a, **k: (0.0, 1000.0, 0.0, 0.0, 60_000.0, 0.0))
    cfg = TrainConfig(device="cuda", fsdp=True, mixed_precision=True, micro_batch=64, micro_batch_tokens="auto",
                      sampling={"max_new_tokens": 4096})
    best = plan.fit_micro_batch_tokens(cfg, _shape(), "{}", 8, 80, 512, False, "sdpa")
    assert best.fits() and 512 + 4096 <= best.tokens < 64 * (512 + 4096)
    assert best.worst[1] <= 0.9 * best.budget  # a tenth left for CUDA's context and fragmentation
    more = plan.plan_run(cfg, _shape(), "{}", 8, 80, 512, False, "sdpa", tokens=best.tokens + 256)
    assert more.worst[1] > 0.9 * more.budget  # 256 tokens more would not leave it
    with __import__("pytest").raises(Exception, match="micro_batch_tokens"):
        TrainConfig(micro_batch_tokens="lots")


@pytest.mark.slow
def test_oreal_plan_prints_every_part_of_the_embedded_policys_run(tmp_path):
    """`oreal plan` on the demo's config: the parts, the phases and a peak, exit 0 with no budget
    to check against, 3 when the budget is too small (the refusal's one line)."""
    env = {**os.environ, "OREAL_CACHE": str(tmp_path)}  # measured afresh, then read back
    out = subprocess.run([sys.executable, "-m", "oreal.cli", "plan", "demo", "steps=2", "--gpu-memory", "0"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for want in ("policy weights", "policy activations", "| policy update |", "peak "):
        assert want in out.stdout, out.stdout
    small = subprocess.run([sys.executable, "-m", "oreal.cli", "plan", "demo", "--gpu-memory", "0.01"],
                           capture_output=True, text=True, env=env, timeout=600)
    assert small.returncode == 3 and "over the 0.0 GiB there are" in small.stdout, small.stdout[-800:]
    assert (tmp_path / "activations.json").is_file()


def test_evaluation_releases_the_engine_as_a_rollout_does(tmp_path, verifier):
    """evaluate() woke the engine (vLLM: its KV cache at the next sample) and nothing released it
    before the checkpoint and the next step's updates; now it is released as after a rollout."""
    from oreal.data import curriculum
    from oreal.recipes.train import Trainer
    from oreal.training.config import build_config

    cfg = build_config(None, [f"out={tmp_path}", "steps=1", "batch_questions=2", "samples=2", "threads=1",
                              "sampling.max_new_tokens=8", "algo.token_weights=none"])
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    calls = []
    tr.engine.resume = lambda: calls.append("resume")
    tr.engine.release = lambda: calls.append("release")
    try:
        tr.evaluate(curriculum.generate(2, "test"), k=1)
        assert calls == ["resume", "release"], calls
    finally:
        tr.close()


def test_the_activation_fit_recovers_a_constant_a_per_token_and_a_span_term_exactly():
    """Three probes a cut give its three coefficients: padded rows (span = the row) and packed
    rows (span = the whole pack, a quadratic in the tokens) alike; a constant (what a layer's
    buffers hold whatever the tokens) is kept apart, not spread over the tokens. By hand: a cut
    of one layer holds 5e6 + 3000 T + 2 T x span bytes, each added layer 1e5 + 800 T + 0.5 T x span."""
    from oreal.plan import PROBES, fit_activations

    for packed in (False, True):
        def peak(layers, rows, length):
            T = rows * length
            span = T if packed else length
            return 5e6 + 3000 * T + 2 * T * span + layers * (1e5 + 800 * T + 0.5 * T * span)

        one = [peak(1, r, n) for r, n in PROBES[packed]]
        two = [peak(2, r, n) for r, n in PROBES[packed]]
        fit = fit_activations(one, two, packed)
        assert fit == pytest.approx((5e6, 3000, 2, 1e5, 800, 0.5), rel=1e-9), (packed, fit)
        T, span = 16384, (16384 if packed else 2048)
        assert fit.fixed_bytes(T, span) + 28 * fit.layer_bytes(T, span) == pytest.approx(
            peak(28, 1, T) if packed else peak(28, T // span, span))
    # noise below zero counts as zero: a plan never shrinks with the size
    assert fit_activations([10.0, 5.0, 1.0], [20.0, 10.0, 2.0], False).per_token_span == 0.0


def test_memory_settings_left_to_auto_follow_the_launch(monkeypatch):
    """fsdp, mixed_precision and activation_checkpointing default to auto: off on CPU (the demo's
    bits unchanged); on a GPU activation checkpointing, and under torchrun with more than one rank
    FSDP2 with bf16 compute (not with LoRA, which FSDP does not take yet). A setting given wins."""
    from oreal.training.config import TrainConfig

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cpu = TrainConfig()
    assert (cpu.fsdp, cpu.mixed_precision, cpu.activation_checkpointing) == (False, False, False)
    one_gpu = TrainConfig(device="cuda")
    assert (one_gpu.fsdp, one_gpu.mixed_precision, one_gpu.activation_checkpointing) == (False, False, True)
    monkeypatch.setenv("WORLD_SIZE", "8")
    node = TrainConfig(device="cuda")
    assert (node.fsdp, node.mixed_precision, node.activation_checkpointing) == (True, True, True)
    lora = TrainConfig(device="cuda", lora={"enabled": True})
    assert (lora.fsdp, lora.mixed_precision) == (False, False)
    given = TrainConfig(device="cuda", fsdp=True, mixed_precision=False, activation_checkpointing=False)
    assert (given.fsdp, given.mixed_precision, given.activation_checkpointing) == (True, False, False)
    assert (TrainConfig(fsdp="auto").fsdp, TrainConfig(device="cpu").fsdp) == (False, False)
    with pytest.raises(Exception, match="activation_checkpointing"):
        TrainConfig(activation_checkpointing="sometimes")


def test_a_config_json_alone_is_enough_to_plan_with_prompt_tokens(tmp_path, monkeypatch, capsys):
    """`oreal plan --prompt-tokens N` reads no tokenizer and no data: a directory holding only a
    model's config.json (the 7B's shape here) is planned, and the launch of --gpus ranks resolves
    the config's auto settings (FSDP2, bf16 compute, checkpointing on 8 GPUs)."""
    import shutil

    from oreal import plan
    from oreal.cli import main

    shutil.copy(Path(__file__).parents[1] / "benchmarks" / "shapes" / "qwen2.5-7b" / "config.json", tmp_path)
    seen = {}

    def fake(*a, **k):  # the probe's coefficients (minutes at 7B widths on 2 cores), recorded
        seen["args"] = a
        return (0.0, 1000.0, 0.0, 0.0, 8_000.0, 0.0)

    monkeypatch.setattr(plan, "activation_model", fake)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rc = main(["plan", f"policy={tmp_path}", "device=cuda", "sampling.max_new_tokens=16384", "--gpus", "8",
               "--prompt-tokens", "1024"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "fsdp=True, mixed_precision=True, activation_checkpointing=True" in out, out
    assert seen["args"][1:4] == ("bfloat16", "sdpa", True)  # bf16 compute, checkpointed
    assert "| policy weights | 3.55 |" in out  # 7.62B float32 parameters sharded 8 ways
