import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from oreal.data import render
from oreal.evaluation import majority_correct, pass_at_k
from oreal.models import default_model_dir, load_policy, load_token_rm, load_tokenizer, save_model
from oreal.rollout import HFGenerateEngine, HFSampler, SamplingConfig, filter_logits


def test_saved_policy_reloads_with_plain_transformers_same_logits(tiny):
    path, model, tok, probs = tiny
    again = AutoModelForCausalLM.from_pretrained(path)
    ids = tok([render(probs[0].question)], return_tensors="pt")["input_ids"]
    model.eval()
    assert torch.equal(model(ids).logits, again(ids).logits)
    t2 = load_tokenizer(path)
    assert t2.decode(t2(probs[0].solution)["input_ids"]) == probs[0].solution


def test_tokenizer_keeps_digits_separate(tiny):
    _, _, tok, _ = tiny
    pieces = [tok.decode([i]) for i in tok("123+45=168")["input_ids"]]
    assert pieces == list("123+45=168")


def test_token_rm_copies_everything_but_the_head(tiny):
    path, model, _, _ = tiny
    rm = load_token_rm(path)
    pol = model.state_dict()
    rm_sd = rm.state_dict()
    new = [k for k in rm_sd if k not in pol]
    assert new and all(k.startswith("score.") for k in new)
    for k, v in rm_sd.items():
        if k in pol:
            assert torch.equal(v, pol[k]), k
    assert rm.config.num_labels == 1


def test_token_rm_saves_and_loads(tiny, tmp_path):
    path, _, tok, _ = tiny
    rm = load_token_rm(path)
    save_model(rm, tok, tmp_path / "rm")
    again = AutoModelForTokenClassification.from_pretrained(tmp_path / "rm")
    ids = torch.tensor([[1, 5, 7, 9]])
    assert torch.equal(rm(ids).logits, again(ids).logits)
    assert again(ids).logits.shape == (1, 4, 1)


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


def test_logprobs_match_a_separate_forward_pass(tiny):
    _, model, tok, probs = tiny
    out = HFSampler(model, tok).sample(_prompts(probs, 4), 2, SamplingConfig(max_new_tokens=10), seed=1)
    model.eval()
    for g in out:
        for r in g:
            ids = torch.tensor([r.prompt_ids + r.response_ids])
            with torch.no_grad():
                lp = model(ids).logits[0, len(r.prompt_ids) - 1:-1].log_softmax(-1)
            ref = lp.gather(-1, torch.tensor(r.response_ids)[:, None]).squeeze(-1)
            assert torch.allclose(ref, torch.tensor(r.logprobs), atol=1e-4)


def test_stop_handling_and_finished_flags(tiny):
    _, model, tok, probs = tiny
    # Make eos likely, so that some responses stop early and others run to the limit.
    eos = tok.eos_token_id
    hook = model.lm_head.register_forward_hook(
        lambda m, i, o: o + torch.where(torch.arange(o.size(-1)) == eos, 2.0, 0.0))
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
    # a stop string ends a response and marks it finished
    g = HFSampler(model, tok).sample(_prompts(probs, 2), 3, SamplingConfig(max_new_tokens=20, stop_strings=["e"]), seed=3)
    for r in (r for grp in g for r in grp):
        assert r.finished == ("e" in r.text) or r.response_ids[-1] == eos


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
    from oreal.rollout.on_device import counter_uniform, row_keys

    keys = row_keys(list(range(2000)), 4, "cpu")
    assert keys.unique().numel() == 8000
    u = torch.stack([counter_uniform(keys, t) for t in range(8)])
    assert 0.0 <= u.min() and u.max() < 1.0
    assert u.mean().item() == pytest.approx(0.5, abs=0.005)
    hist = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.005)
    assert torch.equal(row_keys([7, 9], 3, "cpu")[3:], row_keys([9], 3, "cpu"))  # a question's own keys


def test_inverse_cdf_sampling_follows_the_filtered_distribution():
    from oreal.rollout.on_device import counter_uniform, row_keys, sample_from_logits

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
    model.eval()
    stop = tok.eos_token_id
    for g in a:
        assert len({tuple(r.response_ids) for r in g}) > 1 or len(g[0].response_ids) <= 1
        for r in g:
            assert len(r.response_ids) <= 12
            assert r.finished == (stop in r.response_ids)
            if r.finished:
                assert r.response_ids.index(stop) == len(r.response_ids) - 1  # nothing after the stop
            ids = torch.tensor([r.prompt_ids + r.response_ids])
            with torch.no_grad():
                lp = model(ids).logits[0, len(r.prompt_ids) - 1:-1].log_softmax(-1)
            ref = lp.gather(-1, torch.tensor(r.response_ids)[:, None]).squeeze(-1)
            assert torch.allclose(ref, torch.tensor(r.logprobs), atol=1e-4)
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
