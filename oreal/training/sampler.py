"""A seeded, resumable sampler of training questions (epochs of shuffled order)."""
from __future__ import annotations

import random


class QuestionSampler:
    def __init__(self, n: int, seed: int = 0):
        if n <= 0:
            raise ValueError("no training questions")
        self.n, self.seed = n, seed
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next(self, b: int) -> list[int]:
        out = []
        while len(out) < b:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle(self.epoch)
            take = min(b - len(out), self.n - self.pos)
            out.extend(self._order[self.pos:self.pos + take])
            self.pos += take
        return out

    def state_dict(self) -> dict:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, d: dict) -> None:
        if d["n"] != self.n:
            raise ValueError(f"sampler state is for {d['n']} questions, data has {self.n}")
        self.seed, self.epoch, self.pos = d["seed"], d["epoch"], d["pos"]
        self._order = self._shuffle(self.epoch)
