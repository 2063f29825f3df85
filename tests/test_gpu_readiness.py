"""Issue 32: what a first GPU run would have hit (a crash, a hang, or training that silently does
not learn), each shown on CPU where the CPU can show it. The GPU-only halves (NCCL with CPU
tensors, vLLM's sleep on CUDA) are `cuda` tests in tests/test_cuda.py; here are the small
functions that make their choices. 2-rank cases are in tests/test_distributed.py (slow)."""
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from oreal.errors import ConfigError
from oreal.training.config import build_config
from oreal.rollout import SamplingConfig


@pytest.mark.parametrize("overrides,words", [
    (["dtype=bfloat16"], "the policy and the credit model (token_head) would train bfloat16 weights"),
    (["dtype=bfloat16", "algo.credit=logprob", "lora.enabled=true"], "or algo.credit=surprise"),
    (["dtype=float16", "lora.enabled=true"], "no loss scaler"),
    (["mixed_precision=true"], "mixed_precision=true needs fsdp=true"),
])
def test_low_precision_trainable_weights_are_refused_with_what_to_use(overrides, words):
    """bf16 weights under AdamW with no float32 master copy: at the reference lr 5e-7 an update is
    about 1e-4 of a weight, under bf16's resolution, and rounds away without a word."""
    with pytest.raises(ConfigError, match=re.escape(words)):
        build_config(None, overrides)


def test_what_low_precision_still_runs():
    """A LoRA adapter trains float32 on a bf16 base; the surprise credit trains only its float32
    a, b; FSDP2 mixed precision keeps float32 master weights."""
    build_config(None, ["dtype=bfloat16", "lora.enabled=true", "algo.name=grpo"])
    build_config(None, ["dtype=bfloat16", "lora.enabled=true", "algo.credit=surprise"])
    build_config(None, ["fsdp=true", "mixed_precision=true"])


def test_a_bf16_update_at_the_reference_lr_rounds_away():
    """Why the refusal: the reference's lr 5e-7 on a weight of 0.02 moves it by 1e-4 of itself per
    AdamW step (a normalised step of lr), under bf16's spacing there (about 1.2e-4 absolute)."""
    w = torch.full((1000,), 0.02)
    opt = torch.optim.AdamW([w16 := w.to(torch.bfloat16).requires_grad_()], lr=5e-7, weight_decay=0.0)
    w16.grad = torch.randn(1000).to(torch.bfloat16)
    before = w16.detach().clone()
    opt.step()
    assert torch.equal(w16.detach(), before)  # every update rounded away


def test_a_lora_policys_base_is_unchanged_by_weight_pushes_in_bf16(tiny):
    """The vLLM push merged LoRA in place and unmerged it after every step: in bf16 that rounds the
    frozen base (also the reference policy) a little each time. The merge is now out of place:
    after 20 pushes the base is the same bits, and each pushed weight is base + delta."""
    from oreal.models import add_lora
    from oreal.rollout.weights import full_weights

    _, model, _, _ = tiny
    import copy

    policy = add_lora(copy.deepcopy(model).to(torch.bfloat16), r=4, alpha=8, dropout=0.0, target_modules=["q_proj"])
    for n, p in policy.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)  # a trained adapter: B is 0 only at the start
    assert all(p.dtype == torch.float32 for n, p in policy.named_parameters() if p.requires_grad)
    base = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    for _ in range(20):
        with full_weights(policy) as named:
            pushed = dict(named)
    assert all(torch.equal(p, base[n]) for n, p in policy.named_parameters() if "lora_" not in n)
    q = policy.base_model.model.model.layers[0].self_attn.q_proj
    want = (q.base_layer.weight.float() + q.get_delta_weight("default").float()).to(torch.bfloat16)
    assert torch.equal(pushed["model.layers.0.self_attn.q_proj.weight"], want)
    assert not torch.equal(want, q.base_layer.weight)  # the delta is really there
    assert "model.layers.0.self_attn.k_proj.weight" in pushed and not any("lora" in n for n in pushed)


def test_resume_with_fewer_gpus_than_saved_rng_states():
    """Rank 0 saves every visible GPU's generator; resuming where fewer are visible raised
    IndexError in `set_rng_state_all`. Now the first ones are restored (checked with a stand-in
    setter: the CPU has no CUDA generators)."""
    from oreal.checkpoint import restore_cuda_rng

    got = {}
    assert restore_cuda_rng([b"s0", b"s1", b"s2", b"s3"], 2, lambda s, i: got.__setitem__(i, s)) == 2
    assert got == {0: b"s0", 1: b"s1"}
    assert restore_cuda_rng([b"s0"], 8, lambda s, i: got.__setitem__(i, s)) == 1


def test_collectives_choose_backends_that_move_cpu_and_cuda_tensors():
    """cpu_offload under NCCL alone: the gradient norm's all-reduce and the push's full_tensor() on
    CPU-resident shards fail. The CUDA group is NCCL for CUDA tensors with gloo beside it."""
    from oreal.distributed import backend_for, local_device

    assert backend_for("cuda") == backend_for("cuda:1") == "cuda:nccl,cpu:gloo"
    assert backend_for("cpu") == "gloo"
    assert local_device("cuda:1") == "cuda:1" and local_device("cuda") == "cuda:0"  # was set_device(0) always


def test_two_single_process_fsdp_runs_side_by_side(tmp_path):
    """fsdp=true as one process hard-coded MASTER_PORT=29511: a second job on the node failed to
    bind. Each now takes a free port; two run at once."""
    import subprocess
    import sys

    code = ("import os, torch.distributed as dist; from oreal.distributed import setup; "
            "print(setup('cpu', force=True), os.environ['MASTER_PORT']); import time; time.sleep(3); "
            "dist.destroy_process_group()")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("MASTER_PORT", "RANK", "WORLD_SIZE")}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    ports = {o[0].split()[-1] for o in outs}
    assert len(ports) == 2 and all(o[0].startswith("(0, 1)") for o in outs)


def test_leaving_gathered_gives_the_root_back_its_no_reshard(tmp_path):
    """FSDP2 keeps the root's parameters (embeddings, output layer) gathered between forward and
    backward; leaving `gathered()` set every unit to reshard after forward, the root too, so they
    were all-gathered again in every backward."""
    import subprocess
    import sys

    code = r"""
import torch
from oreal.distributed import fsdp_wrap, gathered, setup
from oreal.models import decoder_layers, load_policy
setup("cpu", force=True)
m = load_policy("default")
fsdp_wrap(m, decoder_layers(m))
m(input_ids=torch.tensor([[5, 6, 7]]))  # the lazy init: the root's flag is FSDP2's own
def resharding(mod):
    return mod._get_fsdp_state()._fsdp_param_group.post_forward_mesh_info is not None
before = (resharding(m), resharding(decoder_layers(m)[0]))
with gathered(m):
    m(input_ids=torch.tensor([[5, 6, 7]]))
print(before, (resharding(m), resharding(decoder_layers(m)[0])))
"""
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("MASTER_PORT", "RANK", "WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "(False, True) (False, True)"


def test_the_engines_device_dtype_and_wake_order():
    """cpu_offload keeps FSDP2's shards in host memory: engine=auto and vLLM read the device from
    the parameters (a CPU sampler, a CPU vLLM). vLLM got dtype=cfg.dtype, float32 under the
    documented fsdp + mixed_precision (30 GB for a 7B: no room for a KV cache in 0.35 x 80 GB).
    resume() woke the whole engine, KV cache included, right after the optimiser step. The
    choices, as the GPU would make them (the vLLM half runs only there)."""
    from oreal.models import load_policy
    from oreal.rollout import EngineSetup, make_engine
    from oreal.rollout.engine import compute_device
    from oreal.rollout.vllm_engine import engine_dtype, wake_tags

    model = load_policy("default")
    assert compute_device(model) == torch.device("cpu")
    assert compute_device(model, EngineSetup(device=torch.device("cuda", 3))) == torch.device("cuda", 3)
    from oreal.models import load_tokenizer

    engine = make_engine("auto", model, load_tokenizer("default"), EngineSetup(device=torch.device("cpu")))
    assert engine.device == torch.device("cpu") and type(engine).__name__ == "HFSampler"

    mixed = EngineSetup(dtype="float32", compute_dtype=torch.bfloat16)
    assert engine_dtype(mixed, torch.device("cuda", 0)) == "bfloat16"
    assert engine_dtype(mixed, torch.device("cpu")) == "float32"  # the CPU check stays exact
    # float32 weights without mixed precision: vLLM served float32 on the GPU (a silent 5-10x)
    assert engine_dtype(EngineSetup(dtype="float32"), torch.device("cuda", 0)) == "bfloat16"
    from oreal.rollout.vllm_engine import VLLMConfig

    exact = EngineSetup(dtype="float32", options=VLLMConfig(dtype="float32"))
    assert engine_dtype(exact, torch.device("cuda", 0)) == "float32"  # asked for by name

    asleep = {"weights", "kv_cache"}
    assert wake_tags(asleep, sampling=False) == ["weights"]  # a push wakes the weights only
    assert wake_tags({"kv_cache"}, sampling=True) == ["kv_cache"]  # the cache when it samples
    assert wake_tags(set(), sampling=True) == []


def test_fsdp_loads_each_model_into_host_memory_and_shards_it_before_the_next(tmp_path, monkeypatch, verifier):
    """A 7B run's start-up put policy, reference and credit model whole on cuda:LOCAL_RANK in
    float32 (about 91 GB a GPU) before sharding any. Now each loads on the CPU and is sharded
    (fully_shard moves one unit at a time to the device) before the next one loads."""
    import oreal.recipes.train as train_mod
    import oreal.training.models as models_mod
    from oreal.models import load_credit_model, load_policy

    events = []
    monkeypatch.setattr(models_mod, "load_policy", lambda *a, **k: events.append(("load", str(a[2]))) or
                        load_policy(*a, **k))
    monkeypatch.setattr(models_mod, "load_credit_model", lambda *a, **k: events.append(("load", str(a[3]))) or
                        load_credit_model(*a, **k))
    real_wrap = models_mod.dist_utils.fsdp_wrap
    monkeypatch.setattr(models_mod.dist_utils, "fsdp_wrap", lambda m, *a, **k: events.append(("shard",)) or
                        real_wrap(m, *a, **k))
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):  # setup() sets them; restored after
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    cfg = build_config(None, [f"out={tmp_path}", "fsdp=true", "threads=1", "batch_questions=2", "samples=2",
                              "sampling.max_new_tokens=16", "algo.credit=logprob"])
    tr = train_mod.Trainer(cfg, verifier, log=lambda *a: None)
    try:
        assert events == [("load", "cpu"), ("shard",)] * 3, events
    finally:
        tr.close()
        import torch.distributed as dist

        dist.destroy_process_group()


def test_a_steps_host_syncs_do_not_grow_with_its_micro_batches(tmp_path, verifier, monkeypatch):
    """About a dozen `.item()` per micro-batch stalled a GPU's queue as often; the policy and
    credit updates now add their sums on the device and read them once a step. Counted here: the
    `.item()` / `.tolist()` calls of a whole step with micro-batches of 2 rows and of 64."""
    from oreal.recipes.train import Trainer

    counts = {}
    for micro in (2, 64):
        cfg = build_config(None, [f"out={tmp_path / str(micro)}", "steps=1", "batch_questions=8", "samples=4",
                                  "threads=1", f"micro_batch={micro}", "sampling.max_new_tokens=32",
                                  "algo.actor_freeze_steps=0", "algo.credit=logprob", "prompt.use_chat_template=false",
                                  "prompt.system=null"])
        tr = Trainer(cfg, verifier, log=lambda *a: None)
        n = {"syncs": 0, "micro": 0}
        real_item, real_tolist = torch.Tensor.item, torch.Tensor.tolist
        for name, real in (("item", real_item), ("tolist", real_tolist)):
            monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _r=real: n.__setitem__("syncs", n["syncs"] + 1) or
                                _r(self, *a))
        for obj, name in ((tr, "policy_update"), (tr.credit, "update")):
            real = getattr(obj, name)

            def counted(batch_or_micro, *a, _real=real, _name=name, **k):
                if _name == "policy_update":
                    n["micro"] = len(batch_or_micro)
                return _real(batch_or_micro, *a, **k)
            monkeypatch.setattr(obj, name, counted)
        base = n["syncs"]
        try:
            m = tr.step().metrics
        finally:
            monkeypatch.undo()
            tr.close()
        assert m["actor_updated"]
        counts[micro] = (n["micro"], n["syncs"] - base)
    (few, s_few), (one, s_one) = counts[2], counts[64]
    assert few >= 3 and one == 1, counts
    assert s_few == s_one, counts  # the same syncs whatever the number of micro-batches


def test_the_gpu_check_fits_the_lent_machine():
    """The GPU check's timeouts added up to 660 s in one command; the machine gives a command at
    most 600 s and the whole check about 12 minutes. Now parts of at most 480 s, each runnable as
    its own command, the most important first."""
    import re
    from pathlib import Path

    script = (Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh").read_text()
    parts = re.findall(r"^\s+(\w+)\) (?:OUT=\"\$OUT\" )?part (\w+) (\d+) ", script, flags=re.M)
    assert [p[0] for p in parts] == ["plan", "quick", "cuda", "memory", "smoke", "demo"]
    assert all(int(limit) <= 480 for _, _, limit in parts)
    # issue 39: its one prepared command ("plan quick") within 8 minutes, set-up included
    assert sum(int(limit) for _, _, limit in parts[:2]) <= 480 - 20


@pytest.mark.slow
def test_the_gpu_memory_check_runs_end_to_end_on_cpu(tmp_path):
    """benchmarks/gpu_memory_check.py's dry run (DEVICE=cpu SIZE=tiny, one gloo rank of FSDP2):
    every figure it writes on the GPU machine is written, with the plan's parts."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(DEVICE="cpu", SIZE="tiny", OUT=str(tmp_path), OMP_NUM_THREADS="1", OREAL_CACHE=str(tmp_path / "cache"))
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_memory_check.py"
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                          str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads((tmp_path / "gpu_memory_check.json").read_text())
    assert got["update"]["tokens"] == 512 and got["update"]["planned_gib"] > 0
    assert "policy activations" in got["update"]["parts"] and "FSDP root gathered" in got["update"]["parts"]
    assert got["engine_check"]["rows"] == 4
    assert got["packed_vs_padded"]["padded"]["tokens"] == got["packed_vs_padded"]["packed"]["tokens"] == 512


def test_eval_mode_gives_every_submodule_back_its_own_mode(tiny):
    """A credit model is a module in train mode around an HF model in eval mode; the forward
    checks ran it under `eval_mode`, which restored `train(True)` on the whole tree and so turned
    the inner model's dropout on: a 2-rank run then drew different dropout masks than one process.
    Found by tests/test_distributed.py (token-head credit, 2 ranks against one)."""
    from oreal.models import TokenHeadCredit, load_token_head
    from oreal.rollout import eval_mode

    path, _, _, _ = tiny
    credit = load_token_head(path)
    assert credit.training and not credit.backbone.training
    with eval_mode(credit):
        assert not credit.training
    assert credit.training and not credit.backbone.training and not any(m.training for m in credit.backbone.modules())


def test_the_hf_engines_decode_only_the_rows_whose_kv_cache_fits(tiny, monkeypatch):
    """`max_batch=1024` rows were decoded at once whatever their length: 1,024 rows of 16k tokens
    of a 7B model's cache is about 950 GB. On a GPU the rows per batch now stop at half the free
    memory (the device's free bytes stand in for a GPU here); the rollouts do not change."""
    import oreal.rollout.engine as engine_mod
    from oreal.rollout import HFSampler, SamplingConfig
    from oreal.rollout.engine import kv_bytes_per_token, rows_that_fit

    assert rows_that_fit(None, 1000, 100, 1024) == 1024  # CPU: the cap
    assert rows_that_fit(80 * 2**30, 57_344, 16_640, 1024) == 45  # a 7B's 57 KB a token, 16k rows, 80 GB free
    assert rows_that_fit(10, 57_344, 16_640, 1024) == 1
    _, model, tok, _ = tiny
    per_token = kv_bytes_per_token(model)
    assert per_token == 2 * 2 * 1 * 16 * 4  # 2 layers, 1 KV head of 16, float32
    prompts = [f"Question: {a}+{b}?\nAnswer: " for a, b in ((3, 4), (12, 30), (7, 8))]
    cfg = SamplingConfig(max_new_tokens=16)
    whole = HFSampler(model, tok).sample(prompts, 4, cfg, seed=[1, 2, 3])
    sizes = []
    sampler = HFSampler(model, tok)
    real = sampler._sample_chunk
    monkeypatch.setattr(sampler, "_sample_chunk", lambda texts, c, keys: sizes.append(len(texts)) or real(texts, c, keys))
    longest = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    monkeypatch.setattr(engine_mod, "device_free_bytes", lambda device: 2 * 5 * per_token * (longest + 16))
    parts = sampler.sample(prompts, 4, cfg, seed=[1, 2, 3])
    assert sizes == [5, 5, 2]
    assert [[r.response_ids for r in g] for g in parts] == [[r.response_ids for r in g] for g in whole]


def _samples(groups):
    return [(r.response_ids, r.finished, r.logprobs) for g in groups for r in g]


def test_the_device_sampler_prefills_each_prompt_once_for_its_k_samples(tiny):
    """`hf_device` prefilled K copies of every prompt (K = 16 in the paper: 16x the prefill's
    compute and activations); it now prefills each distinct prompt once and repeats its cache
    rows, as `hf_sampler` does. Counted: the rows of the first forward, the prefill."""
    from oreal.rollout import OnDeviceSampler
    from oreal.rollout.engine import HFSampler
    from oreal.data import render

    _, model, tok, probs = tiny
    prompts = [render(p.question) for p in probs[:3]]
    eng = OnDeviceSampler(model, tok, check_every=4)
    eng.check_cache(prompts)
    rows = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        out = eng.sample(prompts, 4, SamplingConfig(max_new_tokens=10), seed=[1, 2, 3])
    finally:
        hook.remove()
    assert rows[0][0] == 3 and rows[1] == (12, 1), rows[:2]  # 3 prompts prefilled, 12 rows decoded
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=10)
    assert _samples(eng.sample(prompts, 2, greedy, seed=0)) == _samples(HFSampler(model, tok).sample(prompts, 2, greedy, seed=0))
    assert all(len(g) == 4 for g in out)


def test_the_device_sampler_finds_stop_strings_with_one_host_copy_per_window(tiny, monkeypatch):
    """With stop strings `hf_device` fell back to `hf_sampler`, which copies tokens to the host and
    decodes them after every token (a GPU stalls for each). Now the device sampler copies each
    window of `check_every` tokens once and finds where every string ended: the same rollouts as
    `hf_sampler` (tokens, finished flags, log-probs), with host copies per call that grow with
    tokens / check_every, not with tokens."""
    from oreal.rollout import OnDeviceSampler
    from oreal.rollout.engine import HFSampler
    from oreal.data import render

    _, model, tok, probs = tiny
    prompts = [render(p.question) for p in probs[:3]]
    free = HFSampler(model, tok).sample(prompts, 4, SamplingConfig(max_new_tokens=32), seed=[5, 6, 7])
    texts = [r.text for g in free for r in g if len(r.text) >= 8]
    stops = [texts[0][4:6], texts[1][5:8]]  # strings that some responses hold, at different places
    cfg = SamplingConfig(max_new_tokens=32, stop_strings=stops)
    want = HFSampler(model, tok).sample(prompts, 4, cfg, seed=[5, 6, 7])
    assert sum(r.finished and not r.response_ids[-1] == tok.eos_token_id for g in want for r in g) >= 2
    eng = OnDeviceSampler(model, tok, check_every=8)
    eng.check_cache(prompts)
    copies = {"n": 0}
    package = str(Path(OnDeviceSampler.__module__.replace(".", "/")).parent.parent)  # "oreal"

    def counted(self, *a, _real):  # oreal's own copies (transformers' SDPA mask reads one per forward)
        caller = sys._getframe(2).f_code.co_filename
        copies["n"] += f"/{package}/" in caller.replace("\\", "/")
        return _real(self, *a)
    for name in ("item", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _r=getattr(torch.Tensor, name): counted(self, *a, _real=_r))
    got = eng.sample(prompts, 4, cfg, seed=[5, 6, 7])
    monkeypatch.undo()
    assert [(ids, fin) for ids, fin, _ in _samples(got)] == [(ids, fin) for ids, fin, _ in _samples(want)]
    for (_, _, a), (_, _, b) in zip(_samples(got), _samples(want)):
        assert a == pytest.approx(b, abs=1e-5)
    # per window of 8 tokens: the stop search and the all-done test; per call: the prompts' ids and
    # the rollouts (4 tensors). hf_sampler's loop made 2 or more per token.
    assert copies["n"] <= 2 * (32 // 8) + 3 + 4, copies
