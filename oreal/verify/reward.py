"""A reward given as a plain function, behind the verifier's interface (`verify_batch`).

`RewardFunction(fn)` grades with `fn(question, response, gold) -> bool`. OREAL learns from binary
outcomes, so anything but True/False (or 1/0) is an error, not a reward; a response cut at the
length limit is incorrect without asking `fn`, as the verifier does. `fn` runs in this process:
it sees model text, so it must not execute it.
"""
from __future__ import annotations

import time

from .verifier import Verdict


class RewardError(ValueError):
    """The reward function raised, or returned something that is not a binary outcome."""


def as_reward(reward):
    """What the trainer grades with: a Verifier (anything with `verify_batch`) as it is, a plain
    function `fn(question, response, gold) -> bool` wrapped in a RewardFunction."""
    return reward if hasattr(reward, "verify_batch") else RewardFunction(reward)


class RewardFunction:
    def __init__(self, fn):
        if not callable(fn):
            raise TypeError(f"reward must be callable as fn(question, response, gold) -> bool, got {fn!r}")
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
            if r not in (True, False):  # 1 and 0 (and 1.0, 0.0) compare equal to True and False
                raise RewardError(f"the reward function returned {r!r}; OREAL learns from binary outcomes: "
                                  f"return True (correct) or False")
            out.append(Verdict(bool(r), "ok", seconds=time.perf_counter() - t0))
        return out

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
