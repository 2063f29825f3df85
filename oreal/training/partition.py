"""Which data-parallel rank trains which selected row, so that every rank's token sum is about the
same (veRL's sequence balancing). Pure and deterministic: every rank computes the same answer from
the same gathered lengths, with no communication.

    parts = rank_parts(lengths, owner, world)  # parts[r]: the row indices rank r trains
"""
from __future__ import annotations


def balanced_parts(lengths: list[int], parts: int) -> list[list[int]]:
    """`parts` lists of row indices (every row in exactly one, each list ascending) whose token
    sums are close: longest row first, each to the lightest part that has room (LPT). Room: at
    most ceil(N / parts) rows per part, because a rank's micro-batch count grows with its rows
    too (`micro_batch` caps them) and under FSDP2 every rank runs as many as the busiest. Ties
    (equal lengths, equal sums) go to the lower index."""
    cap = -(-len(lengths) // parts)
    out: list[list[int]] = [[] for _ in range(parts)]
    sums = [0] * parts
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        p = min((p for p in range(parts) if len(out[p]) < cap), key=lambda p: (sums[p], p))
        out[p].append(i)
        sums[p] += lengths[i]
    return [sorted(o) for o in out]


def match_ranks(parts: list[list[int]], owner: list[int], lengths: list[int]) -> list[list[int]]:
    """The parts reordered so that part r goes to rank r, the fewest tokens moving: the (part,
    rank) pairs that share the most tokens (`owner[i]`: the rank that holds row i) are matched
    first, greedily, ties to the lower part then rank."""
    n = len(parts)
    shared = [[0] * n for _ in parts]
    for p, part in enumerate(parts):
        for i in part:
            shared[p][owner[i]] += lengths[i]
    out: list[list[int] | None] = [None] * n
    taken = set()
    for p, r in sorted(((p, r) for p in range(n) for r in range(n)), key=lambda pr: (-shared[pr[0]][pr[1]], pr)):
        if out[r] is None and p not in taken:
            out[r] = parts[p]
            taken.add(p)
    return out


def rank_parts(lengths: list[int], owner: list[int], world: int) -> list[list[int]]:
    """The row indices each of `world` ranks trains: balanced token sums, matched to the ranks
    that already hold most of them."""
    return match_ranks(balanced_parts(lengths, world), owner, lengths)


def imbalance(sums: list[int]) -> float:
    """The largest part's token sum over the mean (1.0: perfectly even; what the busiest rank's
    extra time is proportional to)."""
    mean = sum(sums) / len(sums)
    return max(sums) / mean if mean else 1.0
