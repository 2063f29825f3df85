"""The Python API: the README's "From Python" example runs as written, and a config built in
Python trains what its name says."""
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The example as printed: the embedded model, 3 steps, a custom reward function; run twice,
    as a user reruns a script (the second run replaces the first: issue 41)."""
    from oreal.errors import RunDirError

    monkeypatch.chdir(tmp_path)
    example = _readme_example()
    for _ in range(2):
        scope: dict = {}
        exec(compile(example, "README.md", "exec"), scope)
    with pytest.raises(RunDirError, match=r"out=runs/api holds an earlier run .*overwrite=true") as e:
        exec(compile(example.replace("overwrite=True, ", ""), "README.md", "exec"), {})
    assert "\n" not in str(e.value)  # what a user's script shows under its traceback: one line
    result = scope["result"]
    assert len(result.history) == 3 and (tmp_path / "runs" / "api" / "final" / "policy").is_dir()
    assert any(h["actor_updated"] for h in result.history)
    scores = scope["scores"]
    assert (scores["n"], scores["k"]) == (20, 2)
    assert (scores["pass@1"] * 40) == pytest.approx(round(scores["pass@1"] * 40))  # correct samples of 40
    assert scores["pass@k"] >= scores["pass@1"] > 0.2  # the embedded policy solves about half; 3 steps keep that


def test_top_level_exports_are_lazy_and_complete():
    import subprocess
    import sys

    code = "import sys, oreal; assert 'torch' not in sys.modules; oreal.OREALTrainer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"  # torch loads on first use, not on `import oreal`
    import oreal

    for name in oreal.__all__:  # each name resolves to the object it names
        obj = getattr(oreal, name)
        assert (obj == "0.1.0") if name == "__version__" else obj.__name__ in (name, "TrainConfig"), name


def test_a_config_built_in_python_applies_the_preset_and_validates():
    from oreal import OREALConfig
    from oreal.algo import ALGORITHMS, AlgoConfig
    from oreal.config import ConfigError
    from oreal.training.config import build_config

    direct = OREALConfig(algo="grpo")
    assert direct.algo == build_config(None, ["algo.name=grpo"]).algo
    assert (direct.algo.advantage, direct.algo.objective, direct.algo.token_weights, direct.algo.select,
            direct.algo.actor_freeze_steps) == ("grpo", "ppo_clip", "none", "all", 0)
    assert OREALConfig(algo=AlgoConfig(name="grpo")).algo == direct.algo
    mine = OREALConfig(algo={"name": "grpo", "advantage": "rloo"}, optim={"lr": 1e-4})
    assert mine.algo.advantage == "rloo" and mine.algo.objective == "ppo_clip" and mine.optim.lr == 1e-4
    for name in ALGORITHMS:
        assert OREALConfig(algo=name).algo == build_config(None, [f"algo.name={name}"]).algo
    with pytest.raises(ConfigError, match="algo.name"):
        OREALConfig(algo="ppo")
    with pytest.raises(ConfigError, match="samples: RLOO"):
        OREALConfig(samples=1)
    with pytest.raises(ConfigError, match="loss_norm"):
        AlgoConfig(loss_norm="constant")  # not an aggregation's name: the message lists them
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        OREALConfig(optim={"lrr": 1.0})


def test_every_config_key_has_help_that_config_show_and_train_help_print(capsys):
    from oreal.cli import main
    from oreal.config import describe
    from oreal.training.config import TrainConfig

    keys = describe(TrainConfig)
    assert len(keys) > 80 and all(h for _, h in keys), [k for k, h in keys if not h]
    assert main(["config", "show", "demo"]) == 0
    shown = capsys.readouterr().out
    assert "algo:  # the algorithm\n  name: oreal  # preset:" in shown and "  tau: 0.5  # threshold" in shown
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    helptext = capsys.readouterr().out
    for key, _ in keys:
        assert key in helptext, key


def test_a_directly_built_grpo_config_trains_grpo(tmp_path):
    """OREALConfig(algo="grpo") from Python: no credit model, PG on every selected response, the
    actor updated from step 1; the same run as `oreal train ... algo.name=grpo`."""
    from oreal import OREALConfig, OREALTrainer
    from oreal.data import curriculum

    problems = curriculum.generate(64, "train", seed=0)
    common = dict(steps=2, batch_questions=8, samples=4, threads=1, dump_per_step=0, log_every=0,
                  sampling={"max_new_tokens": 24, "top_p": 1.0}, optim={"lr": 1e-3},
                  prompt={"system": None, "use_chat_template": False})
    runs = {}
    for name, args in [("python", OREALConfig(out=str(tmp_path / "py"), algo="grpo", **common)),
                       ("cli", _from_cli(tmp_path / "cli", common))]:
        with OREALTrainer("default", problems, args, reward=_last_number_reward, log=lambda *a: None) as t:
            assert t.trainer.credit is None  # GRPO loads no credit model
            runs[name] = t.train().history
    assert [h["actor_updated"] or h["skipped"] for h in runs["python"]] == [True, True]
    assert all(h["credit_loss"] is None for h in runs["python"])
    for a, b in zip(runs["python"], runs["cli"]):
        assert (a["loss"], a["reward"], a["selected"]) == (b["loss"], b["reward"], b["selected"])
    assert runs["python"][0]["selected"] == 4 * runs["python"][0]["kept_questions"]  # select=all


def _from_cli(out, common):
    from oreal.training.config import build_config

    flat = [f"out={out}", "algo.name=grpo"] + [f"{k}={v}" for k, v in common.items() if not isinstance(v, dict)]
    flat += [f"{sec}.{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
             for sec, d in common.items() if isinstance(d, dict) for k, v in d.items()]
    return build_config(None, flat)


def _last_number_reward(question, response, gold):
    nums = re.findall(r"-?\d+", response)
    return bool(nums) and nums[-1] == gold


def test_built_model_list_of_dicts_and_reward_errors(tmp_path):
    """A built PreTrainedModel (trained in place), rows as dicts, and a reward that is not binary
    stops with a clear error."""
    from oreal import OREALConfig, OREALTrainer
    from oreal.models import load_policy, load_tokenizer
    from oreal.verify import RewardError

    model, tok = load_policy("default"), load_tokenizer("default")
    rows = [{"question": f"What is {i} + {i}?", "gold_answer": str(2 * i)} for i in range(12)]
    args = OREALConfig(out=str(tmp_path / "run"), steps=1, batch_questions=4, samples=2, threads=1,
                       sampling={"max_new_tokens": 64}, prompt={"system": None, "use_chat_template": False})
    with OREALTrainer(model, rows, args, reward=lambda q, r, g: 0.5, tokenizer=tok, log=lambda *a: None) as t:
        assert t.model is model and len(t.trainer.problems) == 12
        assert t.trainer.problems[3].question == "What is 3 + 3?" and t.trainer.problems[3].gold == "6"
        with pytest.raises(RewardError, match="binary outcomes"):
            t.train()
    with pytest.raises(Exception, match="tokenizer="):
        OREALTrainer(model, rows, args, reward=lambda q, r, g: True, log=lambda *a: None)
    with pytest.raises(Exception, match="dtype"):
        OREALTrainer(model.to(torch.bfloat16), rows, args, reward=lambda q, r, g: True, tokenizer=tok)


def test_a_model_and_a_config_that_name_different_policies_are_refused_and_args_are_not_changed(tmp_path):
    """OREALTrainer(args=OREALConfig(policy=...)) trains args.policy; a `model` that names another
    is a ConfigError (it trained the embedded model without a word); the caller's config is
    never written to."""
    from oreal import OREALConfig, OREALTrainer
    from oreal.config import ConfigError
    from oreal.models import default_model_dir, load_policy, load_tokenizer

    other = tmp_path / "other"
    load_policy("default").save_pretrained(other)
    load_tokenizer("default").save_pretrained(other)
    rows = [{"question": "What is 1 + 1?", "gold_answer": "2"}]
    args = OREALConfig(out=str(tmp_path / "run"), policy=str(other), steps=1, threads=1,
                       sampling={"max_new_tokens": 16})
    with pytest.raises(ConfigError, match="name different policies"):
        OREALTrainer("default", rows, args, reward=lambda q, r, g: True, log=lambda *a: None)
    with pytest.raises(ConfigError, match="built model was given"):
        OREALTrainer(load_policy("default"), rows, args, reward=lambda q, r, g: True,
                     tokenizer=load_tokenizer("default"), log=lambda *a: None)
    with OREALTrainer(train_dataset=rows, args=args, reward=lambda q, r, g: True, log=lambda *a: None) as t:
        assert t.args.policy == str(other) and t.trainer.policy_dir == str(other)
    default = OREALConfig(out=str(tmp_path / "run2"), steps=1, threads=1, sampling={"max_new_tokens": 16})
    with OREALTrainer(str(other), rows, default, reward=lambda q, r, g: True, log=lambda *a: None) as t:
        assert t.args.policy == str(other) and t.args is not default
    assert default.policy == "default"  # the caller's object is untouched
    assert str(default_model_dir()) != str(other)


def test_callbacks_given_to_train_see_the_token_weights_too(tmp_path):
    """One callbacks list: `train(cfg, verifier, callbacks=[cb])` calls every hook of cb, the
    token-weight hook included (it called only the step-end hooks)."""
    from oreal import OREALConfig
    from oreal.recipes.train import train
    from oreal.training.callbacks import Callback
    from oreal.verify import RewardFunction

    class Seen(Callback):
        def __init__(self):
            self.weights, self.ends = 0, 0

        def on_token_weights(self, trainer, batch, rollouts, weights, scores=None):
            self.weights += 1

        def on_step_end(self, trainer, result, control):
            self.ends += 1

    cfg = OREALConfig(out=str(tmp_path / "run"), steps=2, batch_questions=8, samples=4, threads=1, dump_per_step=0,
                      log_every=0, sampling={"max_new_tokens": 24, "top_p": 1.0}, eval_data=None,
                      algo={"actor_freeze_steps": 0}, prompt={"system": None, "use_chat_template": False})
    cb = Seen()
    hist = train(cfg, RewardFunction(_last_number_reward), log=lambda *a: None, callbacks=[cb]).history
    assert cb.ends == 2 and cb.weights == sum(not h["skipped"] for h in hist) > 0


def test_a_tensor_parallel_vllm_engine_is_refused_with_the_reason():
    """tensor_parallel_size > 1 was accepted, and each rank would have sent its own prompts to
    one engine; refused until the ranks of an engine share prompts and seeds."""
    from oreal.config import ConfigError
    from oreal.training.config import build_config

    with pytest.raises(ConfigError, match="tensor_parallel_size > 1 is not supported: each torchrun rank"):
        build_config(None, ["vllm.tensor_parallel_size=2"])


def test_an_unknown_key_in_python_is_the_config_error_the_command_line_gives():
    """`OREALConfig(stepz=3)` raised Python's TypeError; the README says keys are checked as in
    the command line (issue 41)."""
    from oreal import OREALConfig
    from oreal.errors import ConfigError
    from oreal.training.config import build_config

    with pytest.raises(ConfigError) as python:
        OREALConfig(stepz=3)
    with pytest.raises(ConfigError) as cli:
        build_config(None, ["stepz=3"])
    assert str(python.value) == str(cli.value) and str(python.value).startswith("unknown config key 'stepz'; known")
    with pytest.raises(ConfigError, match="unknown config key 'algo.nme'"):
        OREALConfig(algo={"nme": "grpo"})


def test_a_key_from_before_the_credit_rename_is_an_unknown_key():
    """0.1.0 has one name per thing: an old key (optim.rm_lr, token_rm, algo.positive_loss) is
    refused as any unknown key is, naming it, and the old value credit=rm is not a credit model."""
    from oreal import OREALConfig
    from oreal.config import ConfigError
    from oreal.training.config import build_config

    for old in ("optim.rm_lr=1e-3", "token_rm=/some/dir", "algo.positive_loss=pg"):
        with pytest.raises(ConfigError, match=f"unknown config key '{old.split('=')[0]}'"):
            build_config(None, [old])
    with pytest.raises(ConfigError, match="unknown config key 'optim.rm_lr'"):
        OREALConfig(optim={"rm_lr": 1.0})
    with pytest.raises(ConfigError, match="algo.credit"):
        build_config(None, ["algo.credit=rm"])


def test_engine_sections_come_from_the_engine_registry():
    """Each engine that declares its settings (`options` in ENGINES) has its config section under
    its own name, validated as any section: no engine is wired into TrainConfig by hand."""
    import dataclasses

    from oreal.config import ConfigError
    from oreal.rollout.registry import ENGINES, options_class
    from oreal.training.config import TrainConfig, build_config

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    with_options = [n for n, spec in ENGINES.items() if spec.options]
    assert with_options and all(isinstance(fields[n].default_factory(), options_class(n)) for n in with_options)
    cfg = build_config(None, ["vllm.kv_cache_mb=7"])
    assert cfg.vllm.kv_cache_mb == 7 and cfg.engine_options("vllm") is cfg.vllm and cfg.engine_options() is None
    with pytest.raises(ConfigError, match="unknown config key 'vllm.nope'"):
        build_config(None, ["vllm.nope=1"])
