"""Token balancing across data-parallel ranks (veRL's sequence balancing): after selection, the
step's selected rows move between ranks so that each trains about the same number of tokens
(`partition.rank_parts`), instead of each training the rows of the questions it sampled. A rank
with long responses no longer makes the others wait at every collective of the update; the loss
is a sum over tokens divided by global counts, so where a row trains changes the gradient only
in float summation order.

    roll, rows, metrics = rank_rows(roll, sel.rows, rank, world)
    batch = SelectedBatch.build(roll, rows, ...)
"""
from __future__ import annotations

from dataclasses import replace

from .. import distributed as dist_utils
from .batch import RolloutBatch
from .partition import imbalance, rank_parts


def rank_rows(roll: RolloutBatch, rows: list[tuple[int, int]], rank: int,
              world: int) -> tuple[RolloutBatch, list[tuple[int, int]], dict]:
    """Of the step's selected `rows` (the whole batch's, the same on every rank), those this rank
    trains, in their order there; `roll` with the rollouts of rows moved in (and out); and the
    balancing's metrics. `world` 1 (one process, or balancing off): the rows of the questions
    this rank sampled, as without balancing, no collective and no metrics."""
    here = [i for i, (b, _) in enumerate(rows) if roll.is_local(b)]
    if world == 1:
        return roll, [rows[i] for i in here], {}
    n = len(rows)
    owner, lengths = [0] * n, [0] * n
    for r, got in enumerate(dist_utils.all_gather_objects({i: _tokens(roll, rows[i]) for i in here})):
        for i, tokens in got.items():
            owner[i], lengths[i] = r, tokens
    parts = rank_parts(lengths, owner, world)
    target = [0] * n
    for r, part in enumerate(parts):
        for i in part:
            target[i] = r
    moved = [i for i in range(n) if target[i] != owner[i]]
    mine = {rows[i] for i in parts[rank]}
    moved_in = {}
    if moved:  # every rank knows it: one gather of the moving rollouts, each rank keeps its own
        sent = dist_utils.all_gather_objects({rows[i]: roll.rollout(*rows[i]) for i in here if target[i] != rank})
        moved_in = {bk: r for got in sent for bk, r in got.items() if bk in mine}
    moved_out = frozenset(rows[i] for i in here if target[i] != rank)
    sums = [[sum(lengths[i] for i in range(n) if where[i] == r) for r in range(world)] for where in (owner, target)]
    metrics = {"balance_moved_rows": len(moved), "rank_imbalance_before": imbalance(sums[0]),
               "rank_imbalance": imbalance(sums[1])}
    return replace(roll, moved_in=moved_in, moved_out=moved_out), [rows[i] for i in parts[rank]], metrics


def _tokens(roll: RolloutBatch, bk: tuple[int, int]) -> int:
    """A row's tokens as the micro-batches count them: prompt and response."""
    r = roll.rollout(*bk)
    return len(r.prompt_ids) + len(r.response_ids)
