"""A reward given as a plain function, behind the verifier's interface (`verify_batch`).

`RewardFunction(fn)` grades with `fn(question, response, gold) -> bool`. OREAL learns from binary
outcomes, so anything but True/False (or 1/0) is an error, not a reward, unless a `threshold` says
which scores are correct; a response cut at the length limit is incorrect without asking `fn`, as
the verifier does. `fn` runs in this process: it sees model text, so it must not execute it.
TRL's and veRL's reward functions: `oreal.verify.adapters`.
"""
from __future__ import annotations

import math
import time

from .verifier import Verdict


class RewardError(ValueError):
    """The reward function raised, or returned something that is not a binary outcome."""


class Outcomes:
    """What every reward function's wrapper shares: a score made a binary outcome, and the
    verifier's context-manager protocol. `threshold` None: the score must be 0 or 1 (True or
    False); else a score at or above it is correct."""

    def __init__(self, threshold: float | None = None):
        self.threshold = threshold

    def score(self, value, who: str) -> float:
        """`value` as a finite number, or a RewardError naming `who`."""
        if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
            raise RewardError(f"{who} returned {value!r}; expected a number (or True / False)")
        v = float(value)
        if not math.isfinite(v):
            raise RewardError(f"{who} returned {value!r}; expected a finite number")
        return v

    def outcome(self, value, who: str) -> bool:
        v = self.score(value, who)
        if self.threshold is not None:
            return v >= self.threshold
        if v not in (0.0, 1.0):  # True and False are 1 and 0
            raise RewardError(f"{who} returned {value!r}; OREAL learns from binary outcomes: return True (correct) or "
                              f"False, or set reward.threshold (a score at or above it is correct), e.g. "
                              f"OREALConfig(reward={{'threshold': 0.5}}) or reward.threshold=0.5")
        return v == 1.0

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RewardFunction(Outcomes):
    def __init__(self, fn, threshold: float | None = None):
        if not callable(fn):
            raise TypeError(f"reward must be callable as fn(question, response, gold) -> bool, got {fn!r}")
        super().__init__(threshold)
        self.fn = fn

    def verify_batch(self, items, extract: str = "boxed", questions=None) -> list[Verdict]:
        items = list(items)
        questions = list(questions) if questions is not None else [None] * len(items)
        out = []
        for item, question in zip(items, questions):
            gold, response = item[0], item[1]
            if len(item) > 2 and not item[2]:
                out.append(Verdict(False, "unfinished"))
                continue
            t0 = time.perf_counter()
            try:
                r = self.fn(question, response, gold)
            except Exception as e:
                raise RewardError(f"the reward function raised {type(e).__name__}: {e} (gold {gold!r}, "
                                  f"response {response[:80]!r})") from e
            correct = self.outcome(r, "the reward function")
            out.append(Verdict(correct, "ok", seconds=time.perf_counter() - t0))
        return out
