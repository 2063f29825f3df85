"""The Python API: `OREALTrainer(model, train_dataset, args, reward).train()`, as TRL's trainers
take a model, a dataset and a config. It builds the same `Trainer` and runs the same `train()`
loop as `oreal train`; only where the parts come from differs.
"""
from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path

from ..data import Problem, load_list, load_problems
from ..errors import ConfigError
from ..training.callbacks import Callback
from ..training.config import TrainConfig
from ..verify import Verifier, as_reward
from .train import TrainResult, Trainer, train

OREALConfig = TrainConfig  # the config of a run, under the name the Python API uses
_DEFAULT_POLICY = next(f.default for f in fields(TrainConfig) if f.name == "policy")


def _one_policy(model: str, policy: str) -> str:
    """The policy named by `model=` or by `args.policy`: never both differently, never one ignored."""
    if policy not in (_DEFAULT_POLICY, model):
        raise ConfigError(f"model={model!r} and args.policy={policy!r} name different policies; pass one of them")
    return model


class OREALTrainer:
    """Train a policy with OREAL (or a baseline: `OREALConfig(algo="grpo")`).

    model: None (`args.policy`), "default" (the embedded tiny policy), a local HF directory, or a
        built `PreTrainedModel` (pass its `tokenizer`; it is trained in place). A model that
        disagrees with `args.policy` is a ConfigError, never silently one of the two.
    train_dataset: a list of `Problem`, a `datasets.Dataset` or a list of dicts (fields of
        `args.data_preset`; unset: TRL's or veRL's format where the rows are in one, else `question` /
        `gold_answer`), a path or registry name, or None for `args.data`.
    args: an `OREALConfig` (defaults: the reference 7B run's settings); copied, never changed.
    reward: None (`args.reward`, else the math verifier in worker processes), a `Verifier`, a
        function `fn(question, response, gold) -> bool`, veRL's `compute_score(data_source,
        solution_str, ground_truth, extra_info)`, or TRL-style reward functions (as `reward_funcs`).
    reward_funcs: one or several TRL-style reward functions, called as TRL's GRPOTrainer calls
        them; `args.reward` says how several combine and which scores are correct (a threshold).
    eval_dataset: held-out questions, in any form `train_dataset` takes, for `evaluate()` and
        `args.eval_every`.
    callbacks: `oreal.training.callbacks.Callback`s (token weights, step end, train end).
    """

    def __init__(self, model=None, train_dataset=None, args: OREALConfig | None = None, reward=None,
                 eval_dataset=None, tokenizer=None, callbacks: list[Callback] | None = None, log=print,
                 reward_funcs=None):
        if args is not None and not isinstance(args, TrainConfig):
            raise ConfigError(f"args: expected an OREALConfig, got {type(args).__name__}")
        # a copy: the caller's config object is never changed behind its back
        args = copy.deepcopy(args) if args is not None else OREALConfig()
        built = model if model is not None and not isinstance(model, (str, Path)) else None
        if isinstance(model, (str, Path)):
            args.policy = _one_policy(str(model), args.policy)
        elif built is not None and args.policy != _DEFAULT_POLICY:
            raise ConfigError(f"model: a built model was given and args.policy is {args.policy!r}; pass one of them")
        self.args = args
        if reward is not None and reward_funcs is not None:
            raise ConfigError("reward= and reward_funcs= both give a reward; pass one")
        reward = reward if reward is not None else reward_funcs
        configured = args.reward.build()  # args.reward.funcs or .verl, loaded
        if reward is not None and configured is not None:
            raise ConfigError("a reward was given and args.reward names one (reward.funcs / reward.verl); pass one")
        reward = reward if reward is not None else configured
        self._own_verifier = reward is None
        if reward is None:
            reward = Verifier(workers=args.verifier_workers, timeout=args.verifier_timeout)
        self.reward = as_reward(reward, **args.reward.settings())
        problems = _problems(train_dataset, args, "train_dataset") if train_dataset is not None else None
        self.eval_problems = _problems(eval_dataset, args, "eval_dataset") if eval_dataset is not None else None
        try:
            self.trainer = Trainer(args, self.reward, log, policy=built, tokenizer=tokenizer, problems=problems,
                                   callbacks=callbacks)
        except BaseException:
            self._close_verifier()
            raise
        self.log = log

    @property
    def callbacks(self) -> list[Callback]:
        return self.trainer.callbacks

    @property
    def model(self):
        return self.trainer.policy

    @property
    def tokenizer(self):
        return self.trainer.tok

    def train(self) -> TrainResult:
        """Run `args.steps` steps into `args.out` (metrics, checkpoints, `final/policy`)."""
        held_out = self.eval_problems[: self.args.eval_limit] if self.eval_problems is not None else None
        return train(self.args, self.reward, self.log, trainer=self.trainer, eval_set=held_out)

    def evaluate(self, dataset=None, k: int | None = None) -> dict:
        """pass@1 / pass@k / maj@k of the policy as it is now, on `dataset` (else `eval_dataset`,
        else `args.eval_data`), sampled as training samples."""
        problems = (_problems(dataset, self.args, "dataset") if dataset is not None else self.eval_problems
                    or load_list(self.args.eval_data, data_dir_=self.args.data_dir)[: self.args.eval_limit])
        return self.trainer.evaluate(problems, k=k or self.args.eval_k)

    def close(self) -> None:
        self.trainer.close()
        self._close_verifier()

    def _close_verifier(self) -> None:
        if self._own_verifier:
            self.reward.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _problems(data, args: TrainConfig, what: str) -> list[Problem]:
    """Questions from any form the API takes."""
    if isinstance(data, (str, Path)):
        return load_list(str(data), data_dir_=args.data_dir, preset=args.data_preset)
    data = list(data)
    if all(isinstance(p, Problem) for p in data):
        return data
    if all(isinstance(p, dict) for p in data):
        return load_problems(data, args.data_preset, fallback="oreal", source_name=what).problems
    raise ConfigError(f"{what}: expected Problems, a datasets.Dataset, dicts or a path, got "
                      f"{sorted({type(p).__name__ for p in data})}")
