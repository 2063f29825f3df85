import pytest
import torch
from transformers import AutoModelForCausalLM

from oreal.data import render
from oreal.errors import ModelError
from oreal.evaluation import majority_correct, pass_at_k
from oreal.models import default_model_dir, load_policy, load_token_head, load_tokenizer, save_model
from oreal.rollout import HFGenerateEngine, HFSampler, SamplingConfig, filter_logits


def test_saved_policy_reloads_with_plain_transformers_same_logits(tiny):
    path, model, tok, probs = tiny
    again = AutoModelForCausalLM.from_pretrained(path)
    ids = tok([render(probs[0].question)], return_tensors="pt")["input_ids"]
    model.eval()
    assert torch.equal(model(ids).logits, again(ids).logits)
    t2 = load_tokenizer(path)
    assert t2.decode(t2(probs[0].solution)["input_ids"]) == probs[0].solution


def test_a_model_built_on_the_meta_device_is_the_one_from_pretrained_loads(tiny):
    """Under FSDP2 the ranks other than 0 build each model on the meta device, reading no weight
    (`oreal.distributed.load_device`), and get their shards from rank 0: the model built must be
    from_pretrained's but for the values (config, dtype, attention, eval mode, generation config,
    tied embeddings, every parameter's and buffer's name, shape and dtype), whatever the builder."""
    from oreal.distributed import load_device
    from oreal.models import load_credit_model

    def shapes(m):
        return {k: (t.shape, t.dtype) for k, t in [*m.state_dict().items(), *m.named_buffers()]}

    assert (load_device(False, "cuda:0"), load_device(True, "cuda:0")) == ("cuda:0", "cpu")  # one process
    for path in ("default", tiny[0]):
        for dtype in ("float32", "bfloat16"):
            real, meta = load_policy(path, dtype, "cpu", "eager"), load_policy(path, dtype, "meta", "eager")
            assert all(t.is_meta for t in [*meta.parameters(), *meta.buffers()])
            assert meta.config.to_dict() == real.config.to_dict() and not meta.training
            assert meta.config._attn_implementation == "eager"
            assert meta.generation_config.to_dict() == real.generation_config.to_dict()
            assert (meta.get_output_embeddings().weight is meta.get_input_embeddings().weight) == \
                (real.get_output_embeddings().weight is real.get_input_embeddings().weight)
            assert shapes(meta) == shapes(real)
        for kind in ("token_head", "logprob"):
            real, meta = load_credit_model(kind, path), load_credit_model(kind, path, device="meta")
            assert all(t.is_meta for t in meta.parameters()) and shapes(meta) == shapes(real)


def test_tokenizer_keeps_digits_separate(tiny):
    _, _, tok, _ = tiny
    pieces = [tok.decode([i]) for i in tok("123+45=168")["input_ids"]]
    assert pieces == list("123+45=168")


def test_token_rm_copies_everything_but_the_head(tiny):
    """The paper's token RM: the policy's backbone, copied, and a bias-free, zero-initialised
    scalar head, as the reference's `nn.Linear(hidden, 1, bias=False)`."""
    path, model, _, _ = tiny
    rm = load_token_head(path)
    pol = model.model.state_dict()
    assert set(rm.backbone.state_dict()) == set(pol)
    for k, v in rm.backbone.state_dict().items():
        assert torch.equal(v, pol[k]), k
    hidden = model.config.hidden_size
    assert rm.score.bias is None and rm.score.weight.shape == (1, hidden)
    assert torch.equal(rm.score.weight, torch.zeros(1, hidden))


def test_token_rm_saves_and_loads_and_plain_transformers_reads_it(tiny, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel

    path, _, tok, _ = tiny
    rm = load_token_head(path)
    torch.nn.init.normal_(rm.score.weight)  # a trained head: a new one is zero, and a lost head would pass
    rm.save(tmp_path / "rm", tok)
    again = load_token_head(str(tmp_path / "rm"))
    into = load_token_head(path)  # a new model loading the saved one (a checkpoint's resume)
    into.load(tmp_path / "rm")
    ids, attn = torch.tensor([[1, 5, 7, 9]]), torch.ones(1, 4, dtype=torch.long)
    w = rm.scores(ids, attn, ids[:, 1:])
    assert not torch.equal(w, load_token_head(path).scores(ids, attn, ids[:, 1:]))  # a new head scores otherwise
    assert torch.equal(w, again.scores(ids, attn, ids[:, 1:])) and torch.equal(w, into.scores(ids, attn, ids[:, 1:]))
    plain = AutoModel.from_pretrained(tmp_path / "rm")  # the backbone, with transformers alone
    head = load_file(str(tmp_path / "rm" / "token_head.safetensors"))["score.weight"]
    by_hand = (plain(ids).last_hidden_state @ head.T)[:, :-1, 0]
    assert torch.allclose(by_hand, rm.scores(ids, attn, ids[:, 1:]), atol=1e-6)


def test_a_token_rm_saved_by_an_earlier_version_still_loads(tiny, tmp_path):
    """Earlier versions saved the token RM as transformers' token-classification model (a head
    with a bias, keys under the base model's prefix): it loads as saved and scores the same."""
    from transformers import AutoModelForTokenClassification

    path, _, tok, _ = tiny
    old = AutoModelForTokenClassification.from_pretrained(path, num_labels=1).eval()
    torch.nn.init.normal_(old.score.bias)
    save_model(old, tok, tmp_path / "old")
    rm = load_token_head(str(tmp_path / "old")).eval()
    ids = torch.tensor([[1, 5, 7, 9]])
    assert torch.allclose(rm.scores(ids, torch.ones_like(ids), ids[:, 1:]), old(ids).logits[:, :-1, 0], atol=1e-6)
    with pytest.raises(ModelError, match="biased head"):
        load_token_head(path).load(tmp_path / "old")  # into a bias-free head: one line, not a shape error


def _prompts(probs, n):
    return [render(p.question) for p in probs[:n]]


def test_rollout_is_reproducible_and_grouped(tiny):
    _, model, tok, probs = tiny
    eng = HFSampler(model, tok)
    cfg = SamplingConfig(max_new_tokens=12)
    a = eng.sample(_prompts(probs, 3), 4, cfg, seed=7)
    b = eng.sample(_prompts(probs, 3), 4, cfg, seed=7)
    c = eng.sample(_prompts(probs, 3), 4, cfg, seed=8)
    assert [[r.response_ids for r in g] for g in a] == [[r.response_ids for r in g] for g in b]
    assert [[r.response_ids for r in g] for g in a] != [[r.response_ids for r in g] for g in c]
    assert len(a) == 3 and all(len(g) == 4 for g in a)
    for i, g in enumerate(a):
        want = tok(_prompts(probs, 3)[i], add_special_tokens=False)["input_ids"]
        assert all(r.prompt_index == i and r.prompt_ids == want for r in g)
        assert [r.sample_index for r in g] == [0, 1, 2, 3]


def _assert_logprobs_match_a_full_forward(model, groups):
    """Every sampled token's log-prob is that of a separate forward over prompt + response."""
    model.eval()
    for g in groups:
        for r in g:
            ids = torch.tensor([r.prompt_ids + r.response_ids])
            with torch.no_grad():
                lp = model(ids).logits[0, len(r.prompt_ids) - 1:-1].log_softmax(-1)
            ref = lp.gather(-1, torch.tensor(r.response_ids)[:, None]).squeeze(-1)
            assert torch.allclose(ref, torch.tensor(r.logprobs), atol=1e-4)


def test_logprobs_match_a_separate_forward_pass(tiny):
    _, model, tok, probs = tiny
    out = HFSampler(model, tok).sample(_prompts(probs, 4), 2, SamplingConfig(max_new_tokens=10), seed=1)
    _assert_logprobs_match_a_full_forward(model, out)


def test_stop_handling_and_finished_flags(tiny):
    _, model, tok, probs = tiny
    # Make eos likely, so that some responses stop early and others run to the limit.
    eos = tok.eos_token_id
    hook = model.lm_head.register_forward_hook(
        lambda m, i, o: o + torch.where(torch.arange(o.size(-1)) == eos, 4.0, 0.0))
    try:
        out = HFSampler(model, tok).sample(_prompts(probs, 4), 4, SamplingConfig(max_new_tokens=6), seed=0)
    finally:
        hook.remove()
    flat = [r for g in out for r in g]
    assert any(r.finished for r in flat)
    for r in flat:
        if r.finished:
            assert r.response_ids[-1] == eos and eos not in r.response_ids[:-1]
        else:
            assert len(r.response_ids) == 6 and eos not in r.response_ids
    # a stop string ends a response where it first appears and marks it finished: the same seed
    # without it draws the same tokens, so each stopped response is a prefix of the free one
    free = [r for grp in HFSampler(model, tok).sample(_prompts(probs, 2), 3, SamplingConfig(max_new_tokens=20),
                                                     seed=3) for r in grp]
    stop = next(r.text for r in free if len(r.text) >= 6)[3:5]  # a string that some response contains
    cut = [r for grp in HFSampler(model, tok).sample(_prompts(probs, 2), 3, SamplingConfig(
        max_new_tokens=20, stop_strings=[stop]), seed=3) for r in grp]
    stopped = 0
    for a, b in zip(free, cut):
        assert a.response_ids[:len(b.response_ids)] == b.response_ids
        if stop in a.text:
            assert b.finished and stop in b.text and stop not in tok.decode(b.response_ids[:-1], skip_special_tokens=True)
            stopped += 1
        else:
            assert (b.response_ids, b.finished) == (a.response_ids, a.finished)
    assert stopped >= 1


def test_greedy_is_deterministic_and_engines_agree(tiny):
    _, model, tok, probs = tiny
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=8)
    a = HFSampler(model, tok).sample(_prompts(probs, 3), 2, cfg, seed=1)
    b = HFGenerateEngine(model, tok).sample(_prompts(probs, 3), 2, cfg, seed=2)
    assert [[r.response_ids for r in g] for g in a] == [[r.response_ids for r in g] for g in b]
    assert all(g[0].response_ids == g[1].response_ids for g in a)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 1.0, 2, 1.0)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, 1.0, 0, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    kept = ~torch.isinf(filter_logits(logits, 1.0, 0, 0.5))
    assert kept.tolist() == [[True, False, False, False]]


def test_pass_at_k_and_majority():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 2, 1) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 3, 2) == 1.0
    assert majority_correct(["3", "4", "4"], [True, False, False]) is False
    assert majority_correct(["3", "3 ", "4"], [True, True, False]) is True
    assert majority_correct([None, None], [False, False]) is False


def test_embedded_default_model_is_shipped_small_and_loads():
    d = default_model_dir()
    assert (d / "model.safetensors").stat().st_size <= 10 * 1024 * 1024
    model = load_policy("default")
    tok = load_tokenizer("default")
    n = sum(p.numel() for p in model.parameters())
    assert 1e5 < n < 5e6
    assert tok.eos_token_id is not None


def test_counter_uniforms_are_uniform_and_keyed():
    from oreal.rollout.sampling import counter_uniform, row_keys

    keys = row_keys(list(range(2000)), 4, "cpu")
    assert keys.unique().numel() == 8000
    u = torch.stack([counter_uniform(keys, t) for t in range(8)])
    assert 0.0 <= u.min() and u.max() < 1.0
    assert u.mean().item() == pytest.approx(0.5, abs=0.005)
    hist = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.005)
    assert torch.equal(row_keys([7, 9], 3, "cpu")[3:], row_keys([9], 3, "cpu"))  # a question's own keys


def test_inverse_cdf_sampling_follows_the_filtered_distribution():
    from oreal.rollout.sampling import counter_uniform, row_keys, sample_from_logits

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0]))
    u = counter_uniform(row_keys(list(range(20000)), 1, "cpu"), 0)
    draws = sample_from_logits(logits.expand(20000, -1), u, SamplingConfig(temperature=1.0))
    freq = torch.bincount(draws, minlength=5).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0]), atol=0.012)
    nucleus = sample_from_logits(logits.expand(20000, -1), u, SamplingConfig(temperature=1.0, top_p=0.7))
    freq = torch.bincount(nucleus, minlength=5).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0, 0, 0]), atol=0.012)  # renormalised top 0.8
    greedy = sample_from_logits(logits.expand(3, -1), u[:3], SamplingConfig(temperature=0.0))
    assert greedy.tolist() == [0, 0, 0]


def test_on_device_sampler_logprobs_split_invariance_and_stops(tiny):
    from oreal.rollout import OnDeviceSampler

    _, model, tok, probs = tiny
    eng = OnDeviceSampler(model, tok, check_every=4)
    prompts = _prompts(probs, 3)
    cfg = SamplingConfig(max_new_tokens=12)
    a = eng.sample(prompts, 3, cfg, seed=[11, 12, 13])
    assert [[r.response_ids for r in g] for g in a] == \
        [[r.response_ids for r in g] for g in eng.sample(prompts, 3, cfg, seed=[11, 12, 13])]
    b = eng.sample(prompts[1:], 3, cfg, seed=[12, 13])  # a question's rollouts ignore the others
    assert [[r.response_ids for r in g] for g in a[1:]] == [[r.response_ids for r in g] for g in b]
    stop = tok.eos_token_id
    for g in a:
        assert len({tuple(r.response_ids) for r in g}) > 1 or len(g[0].response_ids) <= 1
        for r in g:
            assert len(r.response_ids) <= 12
            assert r.finished == (stop in r.response_ids)
            if r.finished:
                assert r.response_ids.index(stop) == len(r.response_ids) - 1  # nothing after the stop
    _assert_logprobs_match_a_full_forward(model, a)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12)
    assert [[r.response_ids for r in g] for g in eng.sample(prompts, 1, greedy, seed=0)] == \
        [[r.response_ids for r in g] for g in HFSampler(model, tok).sample(prompts, 1, greedy, seed=0)]


def test_auto_engine_is_the_lean_loop_on_cpu(tiny):
    from oreal.rollout import make_engine, resolve_engine

    _, model, tok, _ = tiny
    assert isinstance(make_engine("auto", model, tok), HFSampler) and make_engine("auto", model, tok).name == "hf_sampler"
    assert resolve_engine("auto", "cuda:0") == "hf_device"
    with pytest.raises(ValueError, match="hf_device"):
        resolve_engine("ppo", "cpu")  # unknown names are refused (vllm is registered now)


def test_preallocated_cache_matches_dynamic_cache_through_a_row_drop():
    from transformers.cache_utils import DynamicLayer

    from oreal.rollout.kv_cache import PreallocatedLayer

    g = torch.Generator().manual_seed(0)
    pre, dyn = PreallocatedLayer(capacity=9), DynamicLayer()
    for n in (5, 1, 1):  # a prefill, then two decode steps
        k, v = torch.randn(4, 2, n, 3, generator=g), torch.randn(4, 2, n, 3, generator=g)
        got, want = pre.update(k, v), dyn.update(k, v)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    keep = torch.tensor([0, 2, 3])
    pre.reorder_cache(keep), dyn.reorder_cache(keep)
    assert pre.get_seq_length() == dyn.get_seq_length() == 7
    k, v = torch.randn(3, 2, 1, 3, generator=g), torch.randn(3, 2, 1, 3, generator=g)
    assert all(torch.equal(a, b) for a, b in zip(pre.update(k, v), dyn.update(k, v)))
    pre.update(k, v)
    with pytest.raises(RuntimeError, match="capacity"):
        pre.update(k, v)


def test_decode_attention_equals_sdpa_for_one_query_with_padding_and_groups():
    import torch.nn.functional as F

    from oreal.rollout.kv_cache import decode_attention

    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 4, 1, 8, generator=g), torch.randn(3, 2, 6, 8, generator=g), torch.randn(3, 2, 6, 8, generator=g)
    mask = torch.ones(3, 1, 1, 6, dtype=torch.bool)
    mask[0, ..., :2] = False  # left padding of row 0
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask)
    got, _ = decode_attention(None, q, k, v, mask, scaling=8 ** -0.5)
    assert got.shape == (3, 1, 4, 8)
    assert torch.allclose(got.transpose(1, 2), want, atol=1e-6)
    got_nomask, _ = decode_attention(None, q, k, v, None)
    want_nomask = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    assert torch.allclose(got_nomask.transpose(1, 2), want_nomask, atol=1e-6)


def test_sampling_attention_is_restored_even_after_an_error(tiny):
    from oreal.rollout.kv_cache import DECODE_ATTENTION, sampling_attention

    _, model, _, _ = tiny
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(KeyError):
        with sampling_attention(model):
            assert model.config._attn_implementation == DECODE_ATTENTION
            raise KeyError("boom")
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("compact_at", [0.0, 1.0])
def test_sampler_rows_are_independent_of_batch_and_of_when_finished_rows_leave(tiny, compact_at):
    """Dropping finished rows at every token (0.0) or never (1.0): every log-prob is still that
    of a separate full forward, and a question's rollouts do not depend on the other questions."""
    _, model, tok, probs = tiny
    eos = tok.eos_token_id
    hook = model.lm_head.register_forward_hook(  # responses of many lengths
        lambda m, i, o: o + torch.where(torch.arange(o.size(-1)) == eos, 3.0, 0.0))
    try:
        eng, cfg = HFSampler(model, tok, compact_at=compact_at), SamplingConfig(max_new_tokens=10)
        prompts = _prompts(probs, 4)
        a = eng.sample(prompts, 3, cfg, seed=[5, 6, 7, 8])
        b = eng.sample(prompts[2:], 3, cfg, seed=[7, 8])
        assert len({len(r.response_ids) for g in a for r in g}) > 2
        _assert_logprobs_match_a_full_forward(model, a)
    finally:
        hook.remove()
    assert [[r.response_ids for r in g] for g in a[2:]] == [[r.response_ids for r in g] for g in b]


def test_a_new_engine_is_a_module_and_one_registry_line(tmp_path, monkeypatch, verifier):
    """An engine that holds its own weights, written as a user would (its own module, one line in
    ENGINES), trains through the Trainer: resume / release around every rollout, and after every
    optimiser step the policy's weights under their plain HF names, as full tensors."""
    import sys

    from oreal.recipes.train import Trainer
    from oreal.rollout.registry import ENGINES, EngineSpec
    from oreal.training.config import build_config

    (tmp_path / "my_engine.py").write_text(
        "from oreal.rollout import HFSampler\n"
        "class Recording(HFSampler):\n"
        "    name = 'recording'\n"
        "    holds_weights = True\n"
        "    def __init__(self, model, tokenizer, setup=None):\n"
        "        super().__init__(model, tokenizer, setup)\n"
        "        self.calls = []\n"
        "    def resume(self): self.calls.append('resume')\n"
        "    def release(self): self.calls.append('release')\n"
        "    def sample(self, *a, **k):\n"
        "        self.calls.append('sample')\n"
        "        return super().sample(*a, **k)\n"
        "    def update_weights(self, named):\n"
        "        self.calls.append(('update', {n: t.clone() for n, t in named}))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(ENGINES, "recording", EngineSpec("my_engine:Recording", "records the contract's calls"))
    cfg = build_config(None, ["engine=recording", f"out={tmp_path / 'run'}", "steps=2", "batch_questions=4",
                              "samples=4", "threads=1", "sampling.max_new_tokens=24", "algo.name=grpo",
                              "optim.lr=1e-3", "prompt.use_chat_template=false", "prompt.system=null"])
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    try:
        updated = [tr.step().metrics["actor_updated"] for _ in range(2)]
        calls = tr.engine.calls
        assert [c if isinstance(c, str) else c[0] for c in calls] == \
            sum((["resume", "sample", "release"] + (["resume", "update"] if u else []) for u in updated), [])
        pushed = [c[1] for c in calls if not isinstance(c, str)]
        assert len(pushed) == sum(updated) > 0 and set(pushed[-1]) == {n for n, _ in tr.policy.named_parameters()}
        for name, p in tr.policy.named_parameters():
            assert torch.equal(pushed[-1][name], p.detach())
    finally:
        tr.close()
        sys.modules.pop("my_engine", None)
