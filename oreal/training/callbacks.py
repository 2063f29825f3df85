"""Callbacks: what a run does around its steps, shared by `oreal train`, the demo and
`OREALTrainer`. A callback overrides what it needs; every rank calls every callback in the same
order (some vote across ranks, a collective).

- `on_token_weights(trainer, batch, rollouts, weights, scores)`: the [N, T] token weights the
  policy loss is about to use and the credit model's [N, T] scores w_t they came from (None
  without a credit model); return a tensor of the weights' shape to use instead (None keeps them).
  Under torchrun `batch` holds this rank's rows, and `rollouts.rollout(b, k)` gives the rollout of
  each (b, k) in `batch.rows`, rows that token balancing moved in from another rank included.
- `on_step_end(trainer, result, control)`: after a step; may add metrics to `result.metrics`
  and ask for a checkpoint or a stop through `control`.
- `on_train_end(trainer, history)`: after the last step, before the final weights are written.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from .. import distributed as dist_utils
from ..errors import TrainingError
from .rundir import CappedJsonl, StopOnSignal, format_step
from .state import StepControl, StepResult


def token_weights_of(new, old: torch.Tensor) -> torch.Tensor:
    """What `on_token_weights` returned, checked: None keeps `old`; the shape must be the batch's."""
    if new is None:
        return old
    if tuple(new.shape) != tuple(old.shape):
        raise TrainingError(f"a callback's token weights have shape {tuple(new.shape)}, the batch's {tuple(old.shape)}")
    return new.to(old.device, old.dtype)


class Callback:
    def on_token_weights(self, trainer, batch, rollouts, weights, scores):
        return None

    def on_step_end(self, trainer, result: StepResult, control: StepControl) -> None:
        pass

    def on_train_end(self, trainer, history: list[dict]) -> None:
        pass


class PeriodicEval(Callback):
    """Held-out pass@1 every `every` steps into the metrics (`eval_pass@1`); a new best asks for
    a checkpoint, which `keep_last` never deletes. Every rank evaluates its share of the problems
    (`evaluation.evaluate`: a gather)."""

    def __init__(self, problems: list, every: int, k: int):
        self.problems, self.every, self.k = problems, every, k

    def on_step_end(self, trainer, result, control):
        m, new_best = result.metrics, False
        if self.problems and self.every and m["step"] % self.every == 0:
            m["eval_pass@1"] = trainer.evaluate(self.problems, k=self.k)["pass@1"]
            best = trainer.state.best
            if best is None or m["eval_pass@1"] > best["eval_pass@1"]:
                trainer.state.best, new_best = {"step": m["step"], "eval_pass@1": m["eval_pass@1"]}, True
        control.save |= dist_utils.any_flag(new_best)


class RunFiles(Callback):
    """Rank 0: each step's metrics to metrics.jsonl and the trackers, its responses to
    trajectories.jsonl (capped), the boosted skills to skills.json, and a step line (or a
    progress bar on a terminal)."""

    def __init__(self, out: Path, cfg, trackers, log, first_step: int):
        self.out, self.cfg, self.trackers, self.log = out, cfg, trackers, log
        self.metrics = open(out / "metrics.jsonl", "a")
        self.dumps = CappedJsonl(out / "trajectories.jsonl", cfg.dump_max_mb, log)
        from tqdm import tqdm

        self.bar = tqdm(total=cfg.steps, initial=first_step, desc="train", unit="step", file=sys.stderr,
                        disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def on_step_end(self, trainer, result, control):
        m = result.metrics
        self.metrics.write(json.dumps(m) + "\n")
        self.metrics.flush()
        self.dumps.write(result.trajectories)
        self.trackers.log(m, m["step"])
        if trainer.booster and trainer.booster.history:
            (self.out / "skills.json").write_text(json.dumps(trainer.booster.history, indent=1))
        self.bar.update(1)
        if self.cfg.log_every and m["step"] % self.cfg.log_every == 0:
            line = format_step(m, self.cfg.steps)
            self.log(line) if self.bar.disable else self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
        self.metrics.close()


class StopRules(Callback):
    """Every rank stops together: on SIGINT/SIGTERM anywhere, or when rank 0's clock passes
    `max_seconds`. Both ask for a checkpoint first."""

    def __init__(self, signals: StopOnSignal, max_seconds: float, log):
        self.signals, self.max_seconds, self.log = signals, max_seconds, log

    def on_step_end(self, trainer, result, control):
        import signal

        if dist_utils.any_flag(self.signals.signum is not None):
            control.stop = signal.Signals(self.signals.signum or signal.SIGTERM).name
        over = trainer.rank == 0 and bool(self.max_seconds) and result.metrics["elapsed"] > self.max_seconds
        if dist_utils.any_flag(over):
            control.out_of_time = True
            self.log(f"time limit of {self.max_seconds:.0f}s reached at step {result.metrics['step']}")
        control.save |= control.stop is not None or control.out_of_time


class Timing(Callback):
    """`elapsed` and `eta` in the metrics (first, so that the others see them)."""

    def __init__(self, total_steps: int, first_step: int):
        self.total, self.first, self.t0 = total_steps, first_step, time.time()

    def on_step_end(self, trainer, result, control):
        m = result.metrics
        m["elapsed"] = time.time() - self.t0
        m["eta"] = m["elapsed"] / (m["step"] - self.first) * (self.total - m["step"])
