"""TRL's and veRL's reward functions and datasets, as they are: called as their trainers call
them, combined into one binary outcome as documented, their data formats loaded and detected."""
import json
import re

import pytest

from oreal.data import DEFAULT_SYSTEM, Problem, PromptConfig, curriculum, load_problems, render
from oreal.rollout.engine import Rollout
from oreal.verify import RewardError, StepState, TRLRewards, VerlReward, as_reward, reward_kind


# -- reward functions written the way TRL's documentation writes them ---------------------------
def format_reward(completions, **kwargs):
    """TRL's docs: a completion in the <think>...</think><answer>...</answer> format."""
    pattern = r"^<think>.*?</think>\s*<answer>.*?</answer>$"
    contents = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if re.match(pattern, c, re.S) else 0.0 for c in contents]


def accuracy_reward(completions, solution, **kwargs):
    """TRL's docs' accuracy reward on a `solution` column (here: the last number equals it)."""
    contents = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if (nums := re.findall(r"-?\d+", c)) and nums[-1] == str(s) else 0.0
            for c, s in zip(contents, solution)]


def _problems(n=3, conversational=False):
    out = []
    for i in range(n):
        q = f"What is {i} + {i}?"
        p = Problem(id=str(i), question=q, gold=str(2 * i), fields={"solution": str(2 * i), "level": i})
        if conversational:
            p.messages = [{"role": "system", "content": "Think first."}, {"role": "user", "content": q}]
        out.append(p)
    return out


def _items(problems, texts, finished=None):
    finished = finished or [True] * len(texts)
    return [(p.gold, t, f) for p, t, f in zip(problems, texts, finished)]


def test_trl_functions_get_trls_keyword_arguments_plain_and_conversational():
    seen = []

    def spy(prompts, completions, completion_ids, trainer_state, **kwargs):
        seen.append(dict(prompts=prompts, completions=completions, completion_ids=completion_ids,
                         step=trainer_state.global_step, **kwargs))
        return [1.0] * len(completions)

    for conversational in (False, True):
        probs = _problems(conversational=conversational)
        r = TRLRewards([spy])
        r.trainer_state.global_step = 7
        texts = ["<think>x</think> <answer>0</answer>", "2", "5"]
        v = r.verify_batch(_items(probs, texts), problems=probs, completion_ids=[[1, 2], [3], [4, 5, 6]])
        assert [x.correct for x in v] == [True, True, True]
        call = seen[-1]
        assert call["solution"] == ["0", "2", "4"] and call["level"] == [0, 1, 2]  # every column, a list
        assert call["completion_ids"] == [[1, 2], [3], [4, 5, 6]] and call["step"] == 7
        if conversational:
            assert call["prompts"] == [p.messages for p in probs]
            assert call["completions"] == [[{"role": "assistant", "content": t}] for t in texts]
        else:
            assert call["prompts"] == [p.question for p in probs] and call["completions"] == texts
    # the documented functions themselves, on both forms
    probs = _problems(conversational=True)
    texts = ["<think>0+0</think>\n<answer>0</answer>", "<think>no</think> 3", "4"]
    for f, want in ((format_reward, [True, False, False]), (accuracy_reward, [True, False, True])):
        assert [x.correct for x in TRLRewards(f).verify_batch(_items(probs, texts), problems=probs)] == want


@pytest.mark.parametrize("combine,weights,threshold,want", [
    # scores per sample: f = [1, 0, None, None, 1], g = [1, 1, 1, None, 0]
    ("all", None, None, [True, False, True, False, False]),
    ("any", None, None, [True, True, True, False, True]),
    ("mean", None, 0.5, [True, True, True, False, True]),  # 1, 0.5, 1, -, 0.5
    ("mean", [3.0, 1.0], 0.5, [True, False, True, False, True]),  # 1, 0.25, 1, -, 0.75
    ("sum", [1.0, 2.0], 2.0, [True, True, True, False, False]),  # TRL's weighted sum: 3, 2, 2, -, 1
])
def test_several_functions_combine_as_documented(combine, weights, threshold, want):
    f = lambda completions, **kw: [1.0, 0.0, None, None, 1.0]  # noqa: E731
    g = lambda completions, **kw: [1, 1, 1, None, 0]  # noqa: E731
    probs = _problems(5)
    v = TRLRewards([f, g], combine, weights, threshold).verify_batch(_items(probs, ["a"] * 5), problems=probs)
    assert [x.correct for x in v] == want
    assert v[3].status == "no_answer" and "abstained" in v[3].detail  # None from every function: incorrect


def test_none_abstains_scores_need_a_threshold_and_cut_responses_are_not_asked():
    asked = []

    def third(completions, **kw):
        asked.append(list(completions))
        return [1.0, 0.0, None][: len(completions)]

    probs = _problems(4)
    v = TRLRewards(third).verify_batch(_items(probs, ["a", "b", "c", "d"], [True, True, True, False]),
                                       problems=probs)
    assert asked == [["a", "b", "c"]]  # batched, the cut one left out
    assert [(x.correct, x.status) for x in v] == [(True, "ok"), (False, "ok"), (False, "no_answer"),
                                                  (False, "unfinished")]
    half = lambda completions, **kw: [0.7, 0.2]  # noqa: E731
    with pytest.raises(RewardError, match=r"binary outcomes.*reward\.threshold"):
        TRLRewards(half).verify_batch(_items(probs[:2], ["a", "b"]), problems=probs[:2])
    v = TRLRewards(half, threshold=0.5).verify_batch(_items(probs[:2], ["a", "b"]), problems=probs[:2])
    assert [x.correct for x in v] == [True, False]
    with pytest.raises(RewardError, match="returned 1 rewards for 2"):
        TRLRewards(lambda completions, **kw: [1.0]).verify_batch(_items(probs[:2], ["a", "b"]), problems=probs[:2])
    with pytest.raises(RewardError, match="columns passed: level, solution"):
        TRLRewards(lambda completions, answer, **kw: []).verify_batch(_items(probs[:1], ["a"]), problems=probs[:1])


def test_verl_compute_score_gets_its_row_and_may_return_a_dict(tmp_path):
    calls = []

    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        calls.append((data_source, solution_str, ground_truth, extra_info))
        ok = solution_str.strip().endswith(str(ground_truth))
        return {"score": 1.0 if ok else 0.0, "acc": ok} if extra_info["index"] else (0.9 if ok else 0.1)

    probs = [Problem(id=str(i), question="q", gold=str(i), fields={
        "data_source": "openai/gsm8k", "reward_model": {"style": "rule", "ground_truth": str(i)},
        "extra_info": {"index": i, "split": "train"}}) for i in range(3)]
    items = _items(probs, ["so 0", "so 5", "so 2"])
    assert reward_kind(compute_score) == "verl"
    with pytest.raises(RewardError, match=r"returned 0.9.*reward\.threshold"):
        as_reward(compute_score).verify_batch(items, problems=probs)
    v = as_reward(compute_score, threshold=0.5).verify_batch(items, problems=probs)
    assert [x.correct for x in v] == [True, False, True]
    assert calls[-3:] == [("openai/gsm8k", "so 0", "0", {"index": 0, "split": "train"}),
                          ("openai/gsm8k", "so 5", "1", {"index": 1, "split": "train"}),
                          ("openai/gsm8k", "so 2", "2", {"index": 2, "split": "train"})]
    with pytest.raises(RewardError, match="without a 'score'"):
        VerlReward(lambda **kw: {"acc": 1}).verify_batch(items[:1], problems=probs[:1])


def test_the_dispatch_and_the_config_load_functions_from_files(tmp_path):
    from oreal import OREALConfig
    from oreal.errors import ConfigError
    from oreal.training.config import build_config
    from oreal.verify import RewardFunction

    src = tmp_path / "my_rewards.py"
    src.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 1\n"
                   "def fmt(completions, **kwargs):\n    return [1.0 for _ in completions]\n")
    assert isinstance(as_reward(lambda q, r, g: True), RewardFunction)
    assert isinstance(as_reward(format_reward), TRLRewards) and isinstance(as_reward([format_reward]), TRLRewards)
    assert isinstance(as_reward(f"{src}:compute_score"), VerlReward)
    cfg = build_config(None, [f"reward.verl={src}:compute_score", "reward.threshold=0.5"])
    assert isinstance(cfg.reward.build(), VerlReward) and cfg.reward.build().threshold == 0.5
    built = OREALConfig(reward={"funcs": [f"{src}:fmt", f"{src}:fmt"], "combine": "mean", "weights": [1, 3]})
    trl = built.reward.build()
    assert isinstance(trl, TRLRewards) and (trl.combine, trl.weights, trl.names) == ("mean", [1.0, 3.0], ["fmt", "fmt"])
    assert OREALConfig().reward.build() is None  # unset: the math verifier
    for bad, match in [({"combine": "max"}, "reward.combine"), ({"funcs": ["a:b"], "weights": [1, 2]}, "reward.weights"),
                       ({"funcs": [f"{src}:fmt"], "verl": f"{src}:compute_score"}, "set one")]:
        with pytest.raises(ConfigError, match=match):
            OREALConfig(reward=bad)
    for spec, match in [(f"{src}:nope", "no function 'nope'"), (str(tmp_path / "x.py:f"), "no such file"),
                        ("justaname", "path/to/file.py:name")]:
        with pytest.raises(ConfigError, match=match):
            OREALConfig(reward={"verl": spec}).reward.build()


# -- their datasets ------------------------------------------------------------------------------
def test_trl_prompt_only_datasets_load_and_are_detected(tmp_path, capsys):
    rows = [{"prompt": "What is 2+2?", "solution": "The sum is \\boxed{4}.", "level": 1},
            {"prompt": "What is 3+3?", "solution": 6, "level": 2}]
    path = tmp_path / "trl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = load_problems(path, None).problems
    assert "TRL's prompt-only format" in capsys.readouterr().err  # the one-line notice
    assert (a.question, a.gold, a.messages, a.fields) == ("What is 2+2?", "4", None,
                                                          {"solution": "The sum is \\boxed{4}.", "level": 1})
    assert b.gold == "6" and a.extract == "auto"
    chat = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
             "answer": "2"}, {"prompt": [{"role": "user", "content": "2+2?"}], "ground_truth": "4"}]
    c, d = load_problems(chat, None, source_name="rows").problems
    assert c.messages == chat[0]["prompt"] and c.question == "1+1?" and c.gold == "2" and c.fields == {"answer": "2"}
    assert d.gold == "4" and d.prompt == chat[1]["prompt"]
    assert load_problems([{"question": "1+1?", "gold_answer": "2"}], None, fallback="oreal").problems[0].gold == "2"
    with pytest.raises(Exception, match="'solution', 'answer' or 'ground_truth': missing"):
        load_problems([{"prompt": "x"}], "trl")
    with pytest.raises(Exception, match="messages"):
        load_problems([{"prompt": [{"role": "user"}], "answer": "1"}], "trl")


def _verl_parquet(path, n):
    import pyarrow as pa
    import pyarrow.parquet as pq

    probs = curriculum.generate(n, "train", seed=0)
    rows = [{"data_source": "curriculum", "prompt": [{"role": "user", "content": p.question}], "ability": "math",
             "reward_model": {"style": "rule", "ground_truth": p.gold},
             "extra_info": {"split": "train", "index": i}} for i, p in enumerate(probs)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return probs


def test_verl_parquet_loads_by_detection_with_nested_columns(tmp_path, capsys):
    from oreal.data import load_list, save_problems

    probs = _verl_parquet(tmp_path / "train.parquet", 5)
    got = load_list(str(tmp_path / "train.parquet"))
    assert "veRL's RL format" in capsys.readouterr().err
    assert [p.question for p in got] == [p.question for p in probs] and [p.gold for p in got] == [p.gold for p in probs]
    assert got[1].messages == [{"role": "user", "content": probs[1].question}]
    assert got[1].fields == {"data_source": "curriculum", "ability": "math", "extra_info": {"split": "train", "index": 1},
                             "reward_model": {"style": "rule", "ground_truth": probs[1].gold}}
    save_problems(got, tmp_path / "records.jsonl")  # oreal's own records keep the messages and the columns
    assert load_list(str(tmp_path / "records.jsonl")) == got


def test_a_conversational_prompt_renders_through_the_chat_template_as_it_is():
    from oreal.evaluation import sample_and_grade
    from oreal.models import load_tokenizer

    tok = load_tokenizer("default")
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    messages = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "2+2?"}]
    text = render(messages, tok, PromptConfig())
    assert text == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>Answer in one word.\n<|user|>2+2?\n<|assistant|>" and DEFAULT_SYSTEM not in text
    assert render("2+2?", tok, PromptConfig()).startswith(f"<|system|>{DEFAULT_SYSTEM}")  # oreal's own rows as before
    prefill = messages + [{"role": "assistant", "content": "<think>"}]
    assert render(prefill, tok, PromptConfig()).endswith("<|assistant|><think>")  # continued, as TRL does
    assert render(messages, None, PromptConfig()) == "Question: 2+2?\nAnswer: "  # no chat template

    class Engine:  # what sample_and_grade renders, and the samples it returns
        prompts = []

        def sample(self, prompts, k, sampling, seed=0):
            self.prompts += prompts
            return [[Rollout(i, j, [0], [5, 6, j], "<think>a</think> 4", True) for j in range(k)]
                    for i in range(len(prompts))]

    seen = []

    def spy(prompts, completions, completion_ids, **kw):
        seen.append((prompts, completions, completion_ids, kw["answer"]))
        return [1.0] * len(completions)

    eng = Engine()
    p = Problem(id="0", question="2+2?", gold="4", messages=prefill, fields={"answer": "4"})
    ((_, _, verdicts),) = list(sample_and_grade(eng, tok, [p], TRLRewards(spy), 2, None))
    assert eng.prompts == [render(prefill, tok, PromptConfig())] and all(v.correct for v in verdicts)
    assert seen == [([messages, messages], [[{"role": "assistant", "content": "<think><think>a</think> 4"}]] * 2,
                     [[5, 6, 0], [5, 6, 1]], ["4", "4"])]


# -- training a step or two with each -------------------------------------------------------------
_COMMON = dict(steps=2, batch_questions=4, samples=4, threads=1, dump_per_step=0, log_every=0,
               sampling={"max_new_tokens": 24, "top_p": 1.0}, optim={"lr": 1e-3},
               prompt={"system": None, "use_chat_template": False})


def test_trl_reward_funcs_train_on_a_conversational_trl_dataset(tmp_path):
    from oreal import OREALConfig, OREALTrainer

    rows = [{"prompt": [{"role": "user", "content": p.question}], "solution": p.gold}
            for p in curriculum.generate(32, "train", seed=0)]
    steps_seen = []

    def accuracy(completions, solution, trainer_state, **kwargs):
        steps_seen.append(trainer_state.global_step)
        assert isinstance(completions[0], list) and completions[0][0]["role"] == "assistant"
        return accuracy_reward(completions, solution)

    args = OREALConfig(out=str(tmp_path / "run"), algo="grpo", reward={"combine": "any"}, **_COMMON)
    with OREALTrainer("default", rows, args, reward_funcs=[format_reward, accuracy], log=lambda *a: None) as t:
        assert t.trainer.problems[0].messages == rows[0]["prompt"]
        hist = t.train().history
    assert steps_seen == [0, 1] and len(hist) == 2
    assert 0 < sum(h["reward"] for h in hist) < 2  # the embedded policy solves some, not all
    assert any(h["actor_updated"] for h in hist)
    with pytest.raises(Exception, match="pass one"):
        OREALTrainer("default", rows, args, reward=accuracy, reward_funcs=[accuracy])


def test_a_verl_parquet_trains_with_a_compute_score_file_from_the_config(tmp_path):
    from oreal import OREALTrainer
    from oreal.training.config import build_config

    _verl_parquet(tmp_path / "train.parquet", 32)
    src = tmp_path / "score.py"
    src.write_text(
        "import json, re\n"
        "from pathlib import Path\n"
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    with open(Path(__file__).with_suffix('.calls'), 'a') as f:\n"
        "        f.write(json.dumps([data_source, ground_truth, extra_info]) + '\\n')\n"
        "    nums = re.findall(r'-?\\d+', solution_str)\n"
        "    return {'score': float(bool(nums) and nums[-1] == ground_truth), 'extra': 1}\n")
    flat = [f"out={tmp_path / 'run'}", f"data={tmp_path / 'train.parquet'}", f"reward.verl={src}:compute_score",
            "algo.name=grpo", "sampling.max_new_tokens=24", "sampling.top_p=1.0", "optim.lr=0.001",
            "prompt.system=null", "prompt.use_chat_template=false"]
    flat += [f"{k}={v}" for k, v in _COMMON.items() if not isinstance(v, dict)]
    cfg = build_config(None, flat)
    with OREALTrainer(args=cfg, log=lambda *a: None) as t:
        hist = t.train().history
    calls = [json.loads(line) for line in (tmp_path / "score.calls").read_text().splitlines()]
    assert len(calls) == 2 * 4 * 4 - sum(h["unfinished"] for h in hist)  # every finished sample, once
    assert all(c[0] == "curriculum" and c[2]["split"] == "train" for c in calls)
    assert len(hist) == 2 and 0 < sum(h["reward"] for h in hist) < 2


def test_oreal_train_takes_trl_reward_funcs_from_the_config(tmp_path, capsys):
    from oreal.cli import main

    rows = [{"prompt": p.question, "solution": f"so \\boxed{{{p.gold}}}"} for p in curriculum.generate(16, "train")]
    (tmp_path / "trl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = tmp_path / "rewards.py"
    src.write_text(
        "import re\n"
        "def format_reward(completions, **kwargs):\n"
        "    return [1.0 if re.match(r'^<think>.*?</think>', c) else 0.0 for c in completions]\n"
        "def accuracy_reward(completions, solution, **kwargs):\n"
        "    golds = [re.search(r'boxed\\{(.*)\\}', s).group(1) for s in solution]\n"
        "    return [1.0 if re.findall(r'-?\\d+', c)[-1:] == [g] else 0.0 for c, g in zip(completions, golds)]\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {tmp_path / 'trl.jsonl'}\nsteps: 1\nbatch_questions: 4\nsamples: 4\nthreads: 1\n"
                   f"log_every: 0\nalgo: {{name: grpo}}\nsampling: {{max_new_tokens: 24, top_p: 1.0}}\n"
                   f"prompt: {{system: null, use_chat_template: false}}\n")
    rc = main(["train", str(cfg), f"out={tmp_path / 'run'}", "reward.combine=any",
               f"reward.funcs={src}:format_reward,{src}:accuracy_reward"])
    assert rc == 0 and "TRL's prompt-only format" in capsys.readouterr().err
    (step,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 0 < step["reward"] < 1
