"""Issue 31: the architectures users bring (tests/archs.py), each a tiny random model built from its
`transformers` config. Every architecture: cached decoding equals a full forward (both HF
engines), chunked log-probs equal the full logits, the token RM is its backbone plus a scalar head
and round-trips through plain transformers, FSDP2 finds its decoder layers, LoRA's default targets
adapt attention and MLP; and 2 training steps with each credit model and with GRPO, and a
resume that lands on the same bits. engine=vllm across the matrix is in tests/test_vllm.py."""
import copy
import shutil

import pytest
import torch
from safetensors.torch import load_file

from archs import ARCHS, build
from oreal.data import curriculum, render, save_problems
from oreal.models import add_lora, decoder_layers, load_policy, load_token_head, load_tokenizer
from oreal.rollout import HFSampler, OnDeviceSampler
from oreal.training.logprobs import sequence_logprobs
from oreal.verify.reward import RewardFunction


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return {name: build(name, root / name) for name in ARCHS}


@pytest.fixture(scope="module")
def prompts():
    return [render(p.question) for p in curriculum.generate(4, "train", seed=0)]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_an_architecture_samples_scores_and_shards(arch, arch_dirs, prompts, tmp_path):
    from transformers import AutoModel

    torch.manual_seed(0)
    path = arch_dirs[arch]
    model, tok = load_policy(path).eval(), load_tokenizer(path)
    layers = model.config.get_text_config().num_hidden_layers
    # the HF engines' cached decoding (left padding, a dropped row) equals a full forward
    assert HFSampler(model, tok).check_cache(prompts) <= 1e-3
    assert OnDeviceSampler(model, tok).check_cache(prompts) <= 1e-3
    # chunked log-probs and entropy (the long-responses path) equal the full logits'
    enc = tok(prompts[:3], return_tensors="pt", padding=True, add_special_tokens=False)
    ids, attn = enc["input_ids"], enc["attention_mask"]
    full_lp, full_h = sequence_logprobs(model, ids, attn, ids[:, 1:], chunk=0, entropy=True)
    lp, h = sequence_logprobs(model, ids, attn, ids[:, 1:], chunk=7, entropy=True)
    real = attn[:, 1:].bool()
    assert torch.allclose(lp[real], full_lp[real], atol=1e-5) and torch.allclose(h[real], full_h[real], atol=1e-5)
    # FSDP2's units: the decoder layers, in the policy and in the token RM's backbone
    assert len(decoder_layers(model, required=True)) == layers
    rm = load_token_head(path)
    assert len(decoder_layers(rm.backbone, required=True)) == layers and rm.score.bias is None
    # the token RM: backbone + scalar head, saved where plain transformers reads the backbone back;
    # a trained head (a new one is zero: a head lost on the way would still compare equal)
    torch.nn.init.normal_(rm.score.weight)
    rm.save(tmp_path / "rm", tok)
    again = load_token_head(str(tmp_path / "rm"))
    into = load_token_head(path)  # a new model loading the saved one, as a resume does
    into.load(tmp_path / "rm")
    w = rm.eval().scores(ids, attn, ids[:, 1:])
    assert w.shape == ids[:, 1:].shape and not torch.equal(w, torch.zeros_like(w))
    assert torch.equal(w, again.eval().scores(ids, attn, ids[:, 1:]))
    assert torch.equal(w, into.eval().scores(ids, attn, ids[:, 1:]))
    plain = AutoModel.from_pretrained(tmp_path / "rm").eval()
    head = load_file(str(tmp_path / "rm" / "token_head.safetensors"))["score.weight"]
    by_hand = (plain(input_ids=ids, attention_mask=attn).last_hidden_state @ head.T)[:, :-1, 0]
    assert torch.allclose(by_hand[real], w[real], atol=1e-5)
    # LoRA's default targets adapt each layer's attention and its MLP, never the LM head
    peft_model = add_lora(copy.deepcopy(model), 4, 8, 0.0, ["all-linear"])
    for layer in decoder_layers(peft_model, required=True):
        adapted = [n for n, m in layer.named_modules() if hasattr(m, "lora_A") and n]
        assert any("attn" in n or "attention" in n for n in adapted), (arch, adapted)
        assert any("mlp" in n for n in adapted), (arch, adapted)
    assert not any("lm_head" in n for n, m in peft_model.named_modules() if hasattr(m, "lora_A"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("arch_data")
    save_problems(curriculum.generate(40, "train", seed=0), d / "train.jsonl")
    return d / "train.jsonl"


def _overrides(path, data, out, *extra):
    return [f"policy={path}", f"data={data}", f"out={out}", "eval_data=null", "batch_questions=4", "samples=4",
            "micro_batch=8", "threads=1", "verifier_workers=1", "sampling.max_new_tokens=16", "sampling.top_p=1.0",
            "prompt.use_chat_template=false", "prompt.system=null", "algo.actor_freeze_steps=0",
            "algo.select=all", "optim.lr=1e-3", "optim.credit_lr=1e-3", "optim.warmup=0",
            'sampling.stop_strings=["0","1","2","3","4","5","6"]', *extra]


# A random model never solves a question, and a step with every reward 0 trains nothing: a binary
# user reward (the API's `reward=`) that random responses split, on the responses a digit ended.
PARITY = RewardFunction(lambda question, response, gold: len(response) % 2 == 0)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_an_architecture_trains_with_each_credit_model_and_resumes_to_the_bit(arch, arch_dirs, data, tmp_path):
    """2 steps with the token RM (the default), the log-prob credit and GRPO; the token RM's run
    resumed from its step-1 checkpoint in a new directory: the same bits."""
    from oreal.recipes.train import train
    from oreal.training.config import build_config

    path = arch_dirs[arch]
    quiet = lambda *a: None  # noqa: E731
    for name, extra in (("token_head", ["save_every=1"]), ("logprob", ["algo.credit=logprob"]),
                        ("grpo", ["algo.name=grpo"])):
        cfg = build_config(None, _overrides(path, data, tmp_path / name, "steps=2", *extra))
        res = train(cfg, PARITY, log=quiet)
        assert len(res.history) == 2, (arch, name)
        assert sum(m["actor_updated"] for m in res.history) == 2, (arch, name, res.history)
    before = load_file(str(tmp_path / "token_head" / "final" / "policy" / "model.safetensors"))
    start = load_file(str(tmp_path / "token_head" / "checkpoints" / "step_0000001" / "policy" / "model.safetensors"))
    assert any(not torch.equal(start[k], before[k]) for k in before), "step 2 changed nothing"
    cut = tmp_path / "cut"  # a run stopped after step 1: its checkpoint alone
    shutil.copytree(tmp_path / "token_head" / "checkpoints" / "step_0000001", cut / "checkpoints" / "step_0000001")
    train(build_config(None, _overrides(path, data, cut, "steps=2", "save_every=1", "resume=auto")), PARITY, log=quiet)
    for part in ("policy", "credit"):
        a = load_file(str(tmp_path / "token_head" / "final" / part / "model.safetensors"))
        b = load_file(str(cut / "final" / part / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (arch, part)


def test_a_model_another_trainer_left_wrapped_trains_and_samples(tmp_path):
    """After TRL's GRPOTrainer (accelerate underneath) a model keeps accelerate's bf16 autocast
    wrapper on `forward`, with gradient checkpointing on and `use_cache` off. OREALTrainer takes
    the wrapper off (accelerate's own `extract_model_from_parallel`) and trains and samples as on
    the model transformers built: the same first step as a clean copy. Before, the sampler's
    first check failed and blamed the transformers version."""
    from accelerate import Accelerator

    from oreal import OREALConfig, OREALTrainer

    problems = curriculum.generate(32, "train", seed=0)
    args = dict(steps=1, batch_questions=8, samples=4, threads=1, dump_per_step=0, log_every=0, algo="grpo",
                sampling={"max_new_tokens": 48, "top_p": 1.0}, optim={"lr": 1e-3},
                prompt={"system": None, "use_chat_template": False})
    tok = load_tokenizer("default")
    runs = {}
    for name in ("clean", "wrapped"):
        model = load_policy("default")
        if name == "wrapped":
            model = Accelerator(mixed_precision="bf16", cpu=True).prepare_model(model)
            assert "forward" in vars(model)  # the wrapper accelerate leaves on the instance
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        with OREALTrainer(model, problems, OREALConfig(out=str(tmp_path / name), **args), reward=PARITY,
                          tokenizer=tok, log=lambda *a: None) as t:
            runs[name] = t.train().history[0]
            assert "forward" not in vars(t.model)
    assert runs["clean"]["selected"] > 0 and runs["clean"]["actor_updated"]  # a step that trained
    for key in ("reward", "selected", "loss"):
        assert runs["clean"][key] == pytest.approx(runs["wrapped"][key], rel=1e-5), key


def test_a_forward_replaced_by_something_else_is_refused_in_one_line():
    from oreal.errors import ModelError
    from oreal.models import unwrapped

    model = load_policy("default")
    model.forward = lambda *a, **k: None
    with pytest.raises(ModelError, match="forward replaced on the instance .* pass the model as transformers built it"):
        unwrapped(model)


def test_what_an_architecture_cannot_do_is_refused_in_one_line(arch_dirs):
    """A LoRA target list that matches nothing and a model FSDP2 finds no decoder layers in: one
    line naming the model and what to use instead (vLLM's refusals are in tests/test_vllm.py's
    matrix)."""
    from oreal.errors import ConfigError, ModelError

    model = load_policy(arch_dirs["gpt_neox"])
    with pytest.raises(ConfigError, match=r"match no module of GPTNeoXForCausalLM \(its linear layers: .*"
                                          r"query_key_value.*\); use lora.target_modules=\[all-linear\]"):
        add_lora(model, 4, 8, 0.0, ["q_proj", "v_proj"])
    with pytest.raises(ModelError, match="fsdp=true: no decoder layers found in Sequential"):
        decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)), required=True)
