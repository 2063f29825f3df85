"""TRL's and veRL's reward functions as they are, behind the verifier's interface (`verify_batch`).

`TRLRewards(funcs)` calls each function as TRL's GRPOTrainer does: once per batch, with the keyword
arguments `prompts` (the data's prompt: a string, or its messages), `completions` (strings, or
`[{"role": "assistant", "content": text}]` for a conversational prompt), `completion_ids`,
`trainer_state` (`global_step`, `max_steps`) and every data column (`Problem.fields`; a Problem
without any passes its gold as `ground_truth`), each a list with one value a sample. A function
returns a number or None (it abstains on that sample) a sample. `VerlReward(compute_score)` calls
veRL's `compute_score(data_source=, solution_str=, ground_truth=, extra_info=)` a sample, taking
`data_source`, `reward_model.ground_truth` and `extra_info` from the data row; it returns a number,
or a dict with a `score`.

OREAL learns from binary outcomes: a score other than 0 or 1 needs `threshold` (a score at or above
it is correct), else the run stops with a RewardError that names `reward.threshold`. Several TRL
functions make one outcome by `combine`:
  all  (the default) correct when every function that did not abstain says correct;
  any  correct when one of them does;
  mean the weighted mean of those that did not abstain, then the threshold;
  sum  TRL's own: the weighted sum, an abstention counting 0, then the threshold.
A sample on which every function abstains is incorrect (status `no_answer`). A response cut at
max_new_tokens is incorrect without asking, as the verifier grades it. The functions run in this
process, on model text: they must not execute it.

`as_reward` is the one dispatch: a verifier as it is, `path/to/file.py:name` loaded, a list of
functions as TRL's, and one function by its parameters (`solution_str`: veRL's; `completions` or
`prompts`: TRL's; else oreal's `fn(question, response, gold)`).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .reward import Outcomes, RewardError, RewardFunction
from .verifier import Verdict

COMBINE = ("all", "any", "mean", "sum")
# names TRL passes itself: a data column under one of them is not passed again
_OWN = ("prompt", "prompts", "completion", "completions", "completion_ids", "trainer_state")


@dataclass
class StepState:
    """What a reward function reads of TRL's `trainer_state` (transformers' TrainerState): the
    optimiser steps done before this rollout, and the run's steps. The trainer keeps it current."""
    global_step: int = 0
    max_steps: int = 0


def _unfinished(items) -> tuple[list, list[int]]:
    """The verdict list with the cut responses graded incorrect, and the indices left to grade."""
    out = [None if len(it) < 3 or it[2] else Verdict(False, "unfinished") for it in items]
    return out, [i for i, v in enumerate(out) if v is None]


def _name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


class TRLRewards(Outcomes):
    reads_problems = True  # sample_and_grade passes each sample's Problem and token ids

    def __init__(self, funcs, combine: str = "all", weights=None, threshold: float | None = None):
        funcs = list(funcs) if isinstance(funcs, (list, tuple)) else [funcs]
        if not funcs or not all(callable(f) for f in funcs):
            raise TypeError(f"reward_funcs: expected one or more functions, got {funcs!r}")
        if combine not in COMBINE:
            raise ConfigError(f"reward.combine: expected one of {', '.join(COMBINE)}, got {combine!r}")
        weights = list(weights) if weights else [1.0] * len(funcs)
        if len(weights) != len(funcs):
            raise ConfigError(f"reward.weights: {len(weights)} weights for {len(funcs)} reward functions")
        super().__init__(threshold)
        self.funcs, self.combine, self.weights = funcs, combine, [float(w) for w in weights]
        self.names = [_name(f) for f in funcs]
        self.trainer_state = StepState()

    def verify_batch(self, items, extract: str = "boxed", questions=None, problems=None,
                     completion_ids=None) -> list[Verdict]:
        items = list(items)
        out, live = _unfinished(items)
        if not live:
            return out
        kwargs = self._arguments(items, live, questions, problems, completion_ids)
        t0 = time.perf_counter()
        scores = []
        for f, name in zip(self.funcs, self.names):
            try:
                got = list(f(**kwargs))
            except Exception as e:
                cols = sorted(k for k in kwargs if k not in _OWN)
                raise RewardError(f"reward function {name} raised {type(e).__name__}: {e} (data columns passed: "
                                  f"{', '.join(cols) or 'none'})") from e
            if len(got) != len(live):
                raise RewardError(f"reward function {name} returned {len(got)} rewards for {len(live)} completions")
            scores.append(got)
        seconds = (time.perf_counter() - t0) / len(live)
        for j, i in enumerate(live):
            out[i] = self._combined([s[j] for s in scores], seconds)
        return out

    def _arguments(self, items, live, questions, problems, completion_ids) -> dict:
        """TRL's keyword arguments for the samples `live`."""
        prompts, completions, rows = [], [], []
        for i in live:
            p = problems[i] if problems is not None else None
            text = items[i][1]
            if p is not None and p.messages:
                msgs = list(p.messages)
                bootstrap = msgs.pop()["content"] if msgs[-1]["role"] == "assistant" else ""  # as TRL does
                prompts.append(msgs)
                completions.append([{"role": "assistant", "content": bootstrap + text}])
            else:
                prompts.append(p.question if p is not None else (questions[i] if questions is not None else None))
                completions.append(text)
            rows.append(p.fields if p is not None and p.fields else {"ground_truth": items[i][0]})
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in _OWN]
        ids = [list(completion_ids[i]) for i in live] if completion_ids is not None else [None] * len(live)
        return dict({k: [r.get(k) for r in rows] for k in keys}, prompts=prompts, completions=completions,
                    completion_ids=ids, trainer_state=self.trainer_state)

    def _combined(self, values, seconds: float) -> Verdict:
        said = [(self.score(v, f"reward function {n}"), w, n) for v, w, n in zip(values, self.weights, self.names)
                if v is not None]
        detail = ", ".join(f"{n}={v}" for v, n in zip(values, self.names))
        if not said:
            return Verdict(False, "no_answer", seconds=seconds, detail=f"every reward function abstained ({detail})")
        if self.combine in ("all", "any"):
            outcomes = [self.outcome(v, f"reward function {n}") for v, _, n in said]
            correct = all(outcomes) if self.combine == "all" else any(outcomes)
        else:
            total = sum(w * v for v, w, _ in said)
            if self.combine == "mean":
                wsum = sum(w for _, w, _ in said)
                if wsum == 0:
                    return Verdict(False, "no_answer", seconds=seconds, detail=f"zero total weight ({detail})")
                total /= wsum
            correct = self.outcome(total, f"the {self.combine} of the reward functions ({detail})")
        return Verdict(correct, "ok", seconds=seconds, detail=detail)


class VerlReward(Outcomes):
    reads_problems = True

    def __init__(self, compute_score, threshold: float | None = None):
        if not callable(compute_score):
            raise TypeError(f"compute_score must be callable, got {compute_score!r}")
        super().__init__(threshold)
        self.fn, self.name = compute_score, _name(compute_score)

    def verify_batch(self, items, extract: str = "boxed", questions=None, problems=None,
                     completion_ids=None) -> list[Verdict]:
        items = list(items)
        out, live = _unfinished(items)
        for i in live:
            gold, text = items[i][0], items[i][1]
            p = problems[i] if problems is not None else None
            fields = p.fields if p is not None else {}
            rm = fields.get("reward_model")
            truth = rm.get("ground_truth") if isinstance(rm, dict) and rm.get("ground_truth") is not None else gold
            source = fields.get("data_source", p.source if p is not None else "")
            t0 = time.perf_counter()
            try:
                r = self.fn(data_source=source, solution_str=text, ground_truth=truth,
                            extra_info=fields.get("extra_info"))
            except Exception as e:
                raise RewardError(f"compute_score {self.name} raised {type(e).__name__}: {e} (data_source {source!r}, "
                                  f"ground_truth {truth!r})") from e
            if isinstance(r, dict):
                if "score" not in r:
                    raise RewardError(f"compute_score {self.name} returned a dict without a 'score': {sorted(r)}")
                r = r["score"]
            out[i] = Verdict(self.outcome(r, f"compute_score {self.name}"), "ok", seconds=time.perf_counter() - t0,
                             detail=f"score {r}")
        return out


def load_function(spec: str, key: str = "reward"):
    """The function `spec` names: `path/to/file.py:name` (a file, loaded as a module) or
    `package.module:name` (imported). `key`: the config key, for the error."""
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"{key}: expected path/to/file.py:name or module:name, got {spec!r}")
    try:
        if where.endswith(".py") or "/" in where or "\\" in where:
            path = Path(where)
            if not path.is_file():
                raise ConfigError(f"{key}: {where}: no such file")
            mod_spec = importlib.util.spec_from_file_location(f"oreal_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as e:  # a syntax error, a missing import of the user's file
        raise ConfigError(f"{key}: importing {where} raised {type(e).__name__}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{key}: {where} has no function {attr!r}")
    return fn


def reward_kind(fn) -> str:
    """`verl`, `trl` or `oreal`: which convention a function is written in, by its parameters."""
    try:
        params = set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a builtin: no signature to read
        return "oreal"
    if "solution_str" in params:
        return "verl"
    return "trl" if params & {"completions", "prompts", "completion_ids"} else "oreal"


# each convention's wrapper, built from the function and the settings of `reward.*` it takes
KINDS = {
    "oreal": lambda fn, threshold=None, **_: RewardFunction(fn, threshold),
    "trl": lambda fn, threshold=None, combine="all", weights=None: TRLRewards(fn, combine, weights, threshold),
    "verl": lambda fn, threshold=None, **_: VerlReward(fn, threshold),
}


def as_reward(reward, **settings):
    """What the trainer grades with: a verifier (anything with `verify_batch`) as it is; else a
    function (or `path/to/file.py:name`), or a list of TRL-style ones, wrapped by its convention
    (`reward_kind`) with `settings` (`threshold`, `combine`, `weights`)."""
    if hasattr(reward, "verify_batch"):
        return reward
    if isinstance(reward, str):
        reward = load_function(reward)
    if isinstance(reward, (list, tuple)):
        return KINDS["trl"]([load_function(f, "reward.funcs") if isinstance(f, str) else f for f in reward],
                            **settings)
    return KINDS[reward_kind(reward)](reward, **settings)


def from_settings(funcs=(), verl: str | None = None, **settings):
    """The reward a config names (`reward.funcs`, `reward.verl`), or None: the math verifier."""
    if funcs and verl:
        raise ConfigError("reward.funcs and reward.verl both name a reward; set one")
    if verl:
        return KINDS["verl"](load_function(verl, "reward.verl"), **settings)
    if funcs:
        return KINDS["trl"]([load_function(f, "reward.funcs") for f in funcs], **settings)
    return None
