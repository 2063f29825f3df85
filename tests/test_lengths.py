"""Response lengths that fit the model: `sampling.max_new_tokens=auto` (the default) is what the
model's window leaves after the longest prompt, at most 1024, in `oreal train`, `OREALTrainer`,
`oreal eval` and `oreal plan` alike, said in one line; prompts that cannot fit the model at all are
refused in one line (how many, the longest, the window) before any weights load."""
import shutil

import pytest
import yaml

from oreal.data import Problem, save_problems
from oreal.errors import ConfigError
from oreal.training.config import build_config

AUTO_LINE = ("sampling.max_new_tokens: 202 (auto: the model's window of 256 positions less the longest prompt's 54 "
             "tokens, at most 1024; sampling.max_new_tokens=N sets it)")


def test_the_reference_defaults_train_the_embedded_model(tmp_path, monkeypatch, capsys):
    """The reference run's fixed 1,024 response tokens stopped this at start-up ("a prompt of 54
    tokens + max_new_tokens 1024 exceeds the engine's max_model_len 256"); auto fits them."""
    from oreal.recipes.api import OREALConfig, OREALTrainer

    monkeypatch.chdir(tmp_path)  # the default out=runs/oreal lands here
    trainer = OREALTrainer(model="default", train_dataset="curriculum_train", args=OREALConfig(steps=3))
    try:
        result = trainer.train()
    finally:
        trainer.close()
    assert [h["step"] for h in result.history] == [1, 2, 3]
    said = [x for x in capsys.readouterr().out.splitlines() if "max_new_tokens" in x]
    assert said == [AUTO_LINE]  # once
    assert trainer.trainer.cfg.sampling.max_new_tokens == 202
    assert trainer.args.sampling.max_new_tokens == "auto"  # the caller's config is not changed
    saved = yaml.safe_load((tmp_path / "runs" / "oreal" / "config.yaml").read_text())
    assert saved["sampling"]["max_new_tokens"] == 202  # what the run sampled with: `oreal eval --run` reads it


class _Stop(Exception):
    pass


def test_the_memory_plan_and_the_loss_see_the_fitted_value(tmp_path, monkeypatch, verifier):
    """plan_memory (and everything after it) gets the number auto took, never "auto"; a number
    given is kept as given."""
    import oreal.recipes.train as train_mod

    seen = []

    def spy(cfg, *a, **k):
        seen.append(cfg.sampling.max_new_tokens)
        raise _Stop

    monkeypatch.setattr(train_mod, "plan_memory", spy)
    for given, expected in (([], 202), (["sampling.max_new_tokens=40"], 40)):
        with pytest.raises(_Stop):
            train_mod.Trainer(build_config(None, [f"out={tmp_path}", *given]), verifier, log=lambda *a: None)
        assert seen.pop() == expected


def _unfittable(tmp_path):
    """Three questions, two of them longer than the embedded model's 256 positions."""
    long = "Compute " + "1+" * 340 + "1."
    probs = [Problem(id="a", question="Compute 1+1.", gold="2"), Problem(id="b", question=long, gold="341"),
             Problem(id="c", question=long + " Then add 2.", gold="343")]
    save_problems(probs, tmp_path / "long.jsonl")
    return tmp_path / "long.jsonl", probs


def _longest(probs, prompt):
    from oreal.data import render
    from oreal.models import load_tokenizer
    from oreal.rollout.lengths import token_lengths

    tok = load_tokenizer("default")
    return max(token_lengths(tok, [render(p.question, tok, prompt) for p in probs]))


def test_prompts_that_cannot_fit_are_refused_in_one_line_before_any_weights_load(tmp_path, monkeypatch, verifier):
    """No max_new_tokens can help a prompt longer than the model's window: the refusal says how
    many, the longest and the window (it used to suggest lowering sampling.max_new_tokens)."""
    import oreal.recipes.train as train_mod
    import oreal.training.models as models_mod

    path, probs = _unfittable(tmp_path)

    def no_weights(*a, **k):
        raise AssertionError("weights loaded before the refusal")

    monkeypatch.setattr(models_mod, "load_policy", no_weights)
    for given in ([], ["sampling.max_new_tokens=64"]):  # auto or a number alike
        cfg = build_config(None, [f"out={tmp_path / 'run'}", f"data={path}", "data_preset=oreal_records", *given])
        with pytest.raises(ConfigError) as e:
            train_mod.Trainer(cfg, verifier, log=lambda *a: None)
        longest = _longest(probs, cfg.prompt)
        assert longest > 600
        assert str(e.value) == (f"2 of 3 training prompts do not fit the model: the longest is {longest} tokens and "
                                f"the model's window (max_model_len) is 256 positions, with no room for a response; "
                                f"drop or shorten them, or use a model with a longer window")


def test_the_command_line_refuses_unfittable_prompts_in_one_line(tmp_path):
    from cli_helpers import oreal_all

    path, _ = _unfittable(tmp_path)
    (tmp_path / "cfg.yaml").write_text("steps: 1\n")
    train, ev = oreal_all(["train", str(tmp_path / "cfg.yaml"), f"data={path}", "data_preset=oreal_records",
                           f"out={tmp_path / 'run'}"],
                          ["eval", "--model", "default", "--data", str(path), "--preset", "oreal_records"])
    for r, name in ((train, "train"), (ev, "eval")):
        assert r.returncode == 2, r.stderr[-2000:]
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert lines[-1].startswith(f"oreal {name}: 2 of 3 ") and "window (max_model_len) is 256" in lines[-1], lines
        assert "Loading weights" not in r.stderr and "%|" not in r.stderr  # no weights, no progress bar
        assert sum("do not fit" in x for x in lines) == 1


def test_oreal_plan_plans_for_what_auto_takes(monkeypatch, capsys):
    from oreal import plan
    from oreal.cli import main

    monkeypatch.setattr(plan, "activation_model", lambda *a, **k: (0.0, 1000.0, 0.0, 0.0, 1000.0, 0.0))
    assert main(["plan", "--gpu-memory", "0"]) == 0
    out = capsys.readouterr().out
    assert f"note: {AUTO_LINE}" in out
    assert "micro-batch of 16384 tokens" in out  # 64 rows of 54 + 202 tokens


def _run_dir(tmp_path, **sections):
    """A finished run's directory as training leaves it (config.yaml, final/policy), here with the
    vLLM engine and vllm.* of its own, written as a run on a machine with vLLM would write them."""
    from oreal.config import save_config
    from oreal.data import curriculum
    from oreal.models import default_model_dir

    run = tmp_path / "run"
    shutil.copytree(default_model_dir(), run / "final" / "policy")
    save_problems(curriculum.generate(2, "test", seed=0), tmp_path / "held_out.jsonl")
    cfg = build_config(None, [f"eval_data={tmp_path / 'held_out.jsonl'}", "eval_limit=2", "eval_k=1"])
    save_config(cfg, run / "config.yaml")
    values = yaml.safe_load((run / "config.yaml").read_text())
    for k, v in sections.items():
        values[k] = {**values[k], **v} if isinstance(v, dict) else v
    (run / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    return run


def test_eval_of_a_run_builds_the_runs_engine_with_its_settings(tmp_path, monkeypatch, capsys):
    """`oreal eval --run` of a vLLM run builds vLLM with the run's vllm.* (it built the default
    VLLMConfig); auto says what it took, once. vLLM itself is not needed: the engine built is
    recorded and an HF sampler stands in for it."""
    import oreal.rollout as rollout
    import oreal.rollout.registry as registry
    import oreal.training.config as train_config
    from oreal.cli import main
    from oreal.rollout.vllm_engine import VLLMConfig

    run = _run_dir(tmp_path, engine="vllm", vllm={"max_model_len": 200, "kv_cache_mb": 123, "check_rows": 0},
                   sampling={"max_new_tokens": "auto"})
    for module in (rollout, registry, train_config):
        monkeypatch.setattr(module, "check_installed", lambda name: None)
    built = []

    class Preflight:
        @staticmethod
        def preflight(model_dir):
            pass

    def make_engine(name, model, tok, setup):
        built.append((name, setup))
        return rollout.HFSampler(model, tok)

    monkeypatch.setattr(rollout, "engine_class", lambda *a, **k: Preflight)
    monkeypatch.setattr(rollout, "make_engine", make_engine)
    assert main(["eval", "--run", str(run), "--out", str(tmp_path / "res.json")]) == 0
    (name, setup), = built
    assert name == "vllm" and isinstance(setup.options, VLLMConfig)
    assert (setup.options.max_model_len, setup.options.kv_cache_mb, setup.options.check_rows) == (200, 123, 0)
    err = capsys.readouterr().err
    said = [x for x in err.splitlines() if "max_new_tokens" in x]
    assert len(said) == 1 and said[0].startswith("max_new_tokens: ") and "--max-new-tokens sets it" in said[0], err


def test_evaluate_fits_auto_and_an_engine_refuses_it(tiny, verifier):
    """evaluation.evaluate resolves auto for its problems on its engine; an engine handed auto
    refuses it in one line rather than failing inside its loop."""
    from oreal.evaluation import evaluate, fit_sampling
    from oreal.rollout import HFSampler, SamplingConfig

    path, model, tok, probs = tiny  # 128 positions
    engine = HFSampler(model, tok)
    with pytest.raises(ConfigError, match="max_new_tokens=auto reached the engine"):
        engine.sample(["1+1="], 1, SamplingConfig())
    fitted, said = fit_sampling(SamplingConfig(), engine, tok, probs[:2])
    longest = _longest_tiny(tok, probs[:2])
    assert fitted.max_new_tokens == 128 - longest and "window of 128 positions" in said
    given = SamplingConfig(max_new_tokens=7)
    assert fit_sampling(given, engine, tok, probs[:2]) == (given, None)  # a number is kept
    assert evaluate(engine, tok, probs[:2], verifier, k=1)["n"] == 2
    with pytest.raises(ConfigError, match="sampling.max_new_tokens: expected a number of tokens >= 1 or auto"):
        SamplingConfig(max_new_tokens="lots")


def _longest_tiny(tok, probs):
    from oreal.data import render
    from oreal.rollout.lengths import token_lengths

    return max(token_lengths(tok, [render(p.question, tok) for p in probs]))
