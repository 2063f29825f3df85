"""Dynamic sampling (DAPO, Yu et al. 2025, section 3.2; `algo.refill_rounds`): while fewer than B of
a step's questions survive the pass-rate filter (`algo.filter`: pass rate strictly between 0 and
1), draw B more questions and sample them, up to `algo.refill_rounds` extra rounds; then train on
what there is.

    drawn = sample_rounds(trainer.draw, trainer.rollout, B, cfg.algo.refill_rounds)
    drawn.batch     # what the step trains on; drawn.rewards / drawn.questions: everything drawn

The batch is the step's drawn groups in draw order, cut after the B-th survivor (`kept_prefix`):
exactly B kept groups, as DAPO keeps, the first ones drawn when the last round overshoots; fewer
when the rounds run out. The uniform groups before the cut stay in the batch (the filter keeps
them out of the loss), so a step that needs no refill trains on the batch it always did, bit for bit.

Determinism: each round's questions come from the trainer's `draw` (the skill booster's share,
then the `QuestionSampler`; both checkpointed); round 0 samples with the step's seeds as before,
a refill round with seeds hashed from (seed, step, round, question) (`question_seeds`); and whether
to refill is decided on the rewards gathered from every rank, so under torchrun every rank draws
and samples the same rounds, each sharded over the ranks as round 0 is. Nothing here is state: a
resumed run refills as the uninterrupted one did.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..algo.selection import pass_rate_filter
from ..data.records import Problem
from .batch import RolloutBatch


def question_seeds(seed: int, step: int, n: int, refill_round: int = 0) -> list[int]:
    """The sampling seed of each of a round's `n` questions. Round 0: the step's seeds as oreal has
    always drawn them; a refill round's: a hash of (seed, step, round, question), so that they
    differ from every other round's and step's (but for a 2**-62 chance a pair)."""
    if refill_round == 0:
        return [(seed * 1_000_003 + step * 10_007 + b) % 2**62 for b in range(n)]
    return [int.from_bytes(hashlib.blake2b(f"oreal-refill:{seed}:{step}:{refill_round}:{b}".encode(),
                                           digest_size=8).digest(), "little") % 2**62 for b in range(n)]


def kept_prefix(survived: Sequence[bool], b: int) -> int:
    """How many of the step's drawn groups (`survived`: whether each passed the filter, in draw
    order) it trains on: those up to and including the b-th survivor, else all of them."""
    count = 0
    for i, s in enumerate(survived):
        count += bool(s)
        if count == b:
            return i + 1
    return len(survived)


def needs_refill(survivors: int, b: int, rounds_run: int, max_rounds: int) -> bool:
    """Whether to draw another round: fewer than `b` survivors so far and refill rounds left."""
    return survivors < b and rounds_run < max_rounds


@dataclass
class Rounds:
    """What a step's rounds drew: the batch it trains on and every group sampled."""
    batch: RolloutBatch  # the drawn groups up to the B-th survivor, in draw order
    questions: list[Problem]  # every question drawn, in draw order (the last round's overshoot included)
    rewards: torch.Tensor  # [N, K] of `questions`
    metrics: dict  # reward, pass_rate, boosted, the rollouts' stats (over every round) and refill_*


def sample_rounds(draw: Callable[[], tuple[list[Problem], int]], rollout: Callable[[list[Problem], int], RolloutBatch],
                  b: int, max_rounds: int) -> Rounds:
    """Round 0, then refill rounds while fewer than `b` groups survive the filter (at most
    `max_rounds`). `draw()`: B questions and how many of them the skill booster chose;
    `rollout(questions, round)`: their graded rollouts, the rewards gathered from every rank."""
    questions, boosted = draw()
    rolls = [rollout(questions, 0)]
    survived = pass_rate_filter(rolls[0].rewards).tolist() if max_rounds else []
    t0 = time.time()
    # a refill round draws a whole batch, as DAPO over-samples, not only the missing number: a round
    # of B questions gives every rank a share (as `batch_questions >= world` ensures for round 0, and
    # a rank without one would miss the sampling's collectives), the batched engine samples B about
    # as fast as a few, and more survivors per round mean fewer rounds
    while needs_refill(sum(survived), b, len(rolls) - 1, max_rounds):
        more, n = draw()
        rolls.append(rollout(more, len(rolls)))
        survived += pass_rate_filter(rolls[-1].rewards).tolist()
        questions, boosted = questions + more, boosted + n
    rewards = rolls[0].rewards if len(rolls) == 1 else torch.cat([r.rewards for r in rolls])
    stats = rolls[0].stats if len(rolls) == 1 else {k: sum(r.stats[k] for r in rolls) for k in rolls[0].stats}
    refill = sum(r.rewards.numel() for r in rolls[1:])
    metrics = {"reward": rewards.mean().item(), "pass_rate": rewards.mean(-1).mean().item(), "boosted": boosted,
               **stats, "refill_rounds": len(rolls) - 1, "refill_samples": refill,
               "refill_seconds": time.time() - t0 if max_rounds else None}
    batch = rolls[0] if len(rolls) == 1 else join(rolls, kept_prefix(survived, b), stats)
    return Rounds(batch, questions, rewards, metrics)


def join(rolls: list[RolloutBatch], n: int, stats: dict) -> RolloutBatch:
    """The first `n` groups of the rounds `rolls`, in draw order, as one batch: this rank holds its
    share of each round (`RolloutBatch.local`)."""
    groups, local, offset = [], {}, 0
    for r in rolls:
        for b in range(r.lo, min(r.hi, n - offset)):
            local[offset + b] = len(groups)
            groups.append(r.groups[b - r.lo])
        offset += len(r.questions)
    questions = [q for r in rolls for q in r.questions][:n]
    rewards = torch.cat([r.rewards for r in rolls])[:n]
    cut = None if rolls[0].cut is None else torch.cat([r.cut for r in rolls])[:n]
    lo, hi = (min(local), max(local) + 1) if local else (0, 0)
    return RolloutBatch(questions, groups, rewards, lo, hi, dict(stats), local=local, cut=cut)


__all__ = ["Rounds", "join", "kept_prefix", "needs_refill", "question_seeds", "sample_rounds"]
