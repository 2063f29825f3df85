"""Token balancing across data-parallel ranks: the pure partition (values checked by hand, and
against a brute force on small cases), and the row exchange on two gloo processes."""
import itertools
import random
import socket

import pytest
import torch

from oreal.data import Problem
from oreal.rollout import Rollout
from oreal.training.balance import rank_rows
from oreal.training.batch import RolloutBatch, SelectedBatch
from oreal.training.partition import balanced_parts, imbalance, match_ranks, rank_parts


def _sums(lengths, parts):
    return [sum(lengths[i] for i in p) for p in parts]


def test_longest_first_to_the_lightest_part_by_hand():
    # 10 -> p0, 9 -> p1, 8 -> p1 (9 < 10), 7 -> p0, 6 -> p0 (17 = 17: the lower part; now full), 5 -> p1
    assert balanced_parts([10, 9, 8, 7, 6, 5], 2) == [[0, 3, 4], [1, 2, 5]]
    assert _sums([10, 9, 8, 7, 6, 5], [[0, 3, 4], [1, 2, 5]]) == [23, 22]
    assert balanced_parts([5, 5, 5, 5], 2) == [[0, 2], [1, 3]]  # ties go to the lower index
    assert balanced_parts([3], 2) == [[0], []]  # fewer rows than parts: a part may be empty
    assert balanced_parts([4, 1, 2], 1) == [[0, 1, 2]]
    assert balanced_parts([], 3) == [[], [], []]


def test_no_part_takes_more_than_its_share_of_rows():
    """One long row beside short ones: by tokens alone the short ones would all go to the other
    part (3 rows against 1), and that rank would run more micro-batches of `micro_batch` rows."""
    assert balanced_parts([100, 1, 1, 1], 2) == [[0, 3], [1, 2]]
    rng = random.Random(1)
    for _ in range(200):
        n, p = rng.randint(0, 30), rng.randint(1, 5)
        parts = balanced_parts([rng.randint(1, 500) for _ in range(n)], p)
        assert max(len(x) for x in parts) <= -(-n // p)


def test_every_row_in_exactly_one_part_and_the_same_answer_each_time():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 1000) for _ in range(rng.randint(0, 40))]
        p = rng.randint(1, 6)
        owner = [rng.randrange(p) for _ in lengths]
        parts = rank_parts(lengths, owner, p)
        assert len(parts) == p
        assert sorted(i for part in parts for i in part) == list(range(len(lengths)))
        assert all(part == sorted(part) for part in parts)
        assert rank_parts(list(lengths), list(owner), p) == parts


def _best_max(lengths, p):
    """Brute force: the smallest largest-part sum over every assignment that respects the room."""
    cap = -(-len(lengths) // p)
    best = None
    for a in itertools.product(range(p), repeat=len(lengths)):
        if max(a.count(x) for x in range(p)) > cap:
            continue
        worst = max(sum(n for n, x in zip(lengths, a) if x == part) for part in range(p))
        best = worst if best is None else min(best, worst)
    return best


@pytest.mark.parametrize("parts", [2, 3])
def test_within_four_thirds_of_the_best_partition(parts):
    """LPT's classic bound, against the best partition with the same room per part, on random
    small cases: long and short rows mixed, as a step's responses are."""
    rng = random.Random(parts)
    for _ in range(150):
        lengths = [rng.choice([rng.randint(1, 10), rng.randint(1, 100)]) for _ in range(rng.randint(1, 8 - parts))]
        got = max(_sums(lengths, balanced_parts(lengths, parts)))
        assert got <= _best_max(lengths, parts) * 4 / 3, lengths


def test_parts_go_to_the_ranks_that_hold_most_of_their_tokens():
    lengths, owner = [10, 9, 8, 7, 6, 5], [0, 0, 0, 1, 1, 1]  # rank 0 sampled the first three
    parts = balanced_parts(lengths, 2)  # [[0, 3, 4], [1, 2, 5]]: 10 + 13 and 17 + 5 tokens held by ranks 0, 1
    assert match_ranks(parts, owner, lengths) == [[1, 2, 5], [0, 3, 4]]  # 17 + 13 tokens stay: rows 0 and 5 move
    assert rank_parts(lengths, owner, 2) == [[1, 2, 5], [0, 3, 4]]
    assert imbalance([27, 18]) == 1.2 and imbalance([22, 23]) == pytest.approx(23 / 22.5)
    assert imbalance([0, 0]) == 1.0


def test_skewed_batch_is_balanced():
    """The figure of the report: 8 ranks, 64 questions x 16 samples, the first ranks' questions
    with 8x longer responses; the busiest rank's tokens over the mean, before and after."""
    rng = random.Random(0)
    lengths = [200 + rng.randint(0, 8000 if b < 16 else 1000) for b in range(64) for _ in range(16)]
    owner = [b * 8 // 64 for b in range(64) for _ in range(16)]
    before = imbalance([sum(n for n, o in zip(lengths, owner) if o == r) for r in range(8)])
    after = imbalance(_sums(lengths, rank_parts(lengths, owner, 8)))
    print(f"max/mean rank tokens: {before:.3f} before, {after:.5f} after")
    assert before > 2.5 and after < 1.001


def _roll(lengths_by_question, lo, hi, samples):
    """Question b's rollouts have prompt 2 tokens and response lengths_by_question[b][k] tokens."""
    n = lengths_by_question
    groups = [[Rollout(b, k, [1, 2], [b + 3] * n[b][k], f"q{b}s{k}", True, [-0.5] * n[b][k]) for k in range(samples)]
              for b in range(lo, hi)]
    qs = [Problem(f"q{b}", "?", "1") for b in range(len(lengths_by_question))]
    return RolloutBatch(qs, groups, torch.zeros(len(lengths_by_question), samples), lo, hi)


def test_one_process_is_untouched():
    roll = _roll([[3, 5], [7, 1]], 0, 2, 2)
    rows = [(0, 1), (1, 0), (0, 0)]
    out, mine, metrics = rank_rows(roll, rows, 0, 1)
    assert out is roll and mine == rows and metrics == {}


_LENGTHS = [[30, 28], [25, 20], [2, 3], [1, 4]]  # rank 0 samples questions 0, 1 (long), rank 1 2, 3 (short)


def _exchange(rank, port, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        lo, hi = (0, 2) if rank == 0 else (2, 4)
        roll = _roll(_LENGTHS, lo, hi, 2)
        rows = [(b, k) for b in range(4) for k in range(2) if (b, k) != (3, 0)]  # 7 selected
        roll, mine, metrics = rank_rows(roll, rows, rank, 2)
        batch = SelectedBatch.build(roll, mine, torch.zeros(4, 2), 0)
        queue.put((rank, mine, metrics, sorted(roll.moved_in), sorted(roll.moved_out), roll.local_pairs(),
                   batch.lengths, batch.engine_logp.sum().item(), [roll.rollout(b, k).text for b, k in mine]))
    finally:
        dist.destroy_process_group()


def test_two_ranks_exchange_rows_to_even_token_sums():
    """Rows (prompt 2 + response) 32 30 27 22 | 4 5 6, rank 0 holding the first four: 111 tokens
    against 15. LPT (room: 4 rows): 32 -> p0, 30 -> p1, 27 -> p1, 22 -> p0, 6 -> p0, 5 -> p1,
    4 -> p0: 64 and 62 tokens. p1 keeps 57 of rank 0's tokens, p0 54: rank 0 trains p1, and
    rows 32, 22 (rank 0's) and 5 (rank 1's) move."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_exchange, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict((x[0], x[1:]) for x in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    mine0, metrics0, in0, out0, local0, lengths0, logp0, texts0 = got[0]
    mine1, metrics1, in1, out1, local1, lengths1, logp1, texts1 = got[1]
    assert mine0 == [(0, 1), (1, 0), (2, 1)] and mine1 == [(0, 0), (1, 1), (2, 0), (3, 1)]
    assert lengths0 == [30, 27, 5] and lengths1 == [32, 22, 4, 6]
    assert metrics0 == metrics1 == {"balance_moved_rows": 3, "rank_imbalance_before": pytest.approx(111 / 63),
                                    "rank_imbalance": pytest.approx(64 / 63)}
    assert in0 == [(2, 1)] and out0 == [(0, 0), (1, 1)] and in1 == out0 and out1 == in0
    assert local0 == [(0, 1), (1, 0)] and local1 == [(2, 0), (3, 0), (3, 1)]  # what each dumps besides its rows
    assert texts0 == ["q0s1", "q1s0", "q2s1"] and texts1 == ["q0s0", "q1s1", "q2s0", "q3s1"]  # the moved rollouts
    assert logp0 == -0.5 * (28 + 25 + 3) and logp1 == -0.5 * (30 + 20 + 2 + 4)  # their engine log-probs too


def test_balance_tokens_is_a_documented_switch_on_by_default():
    from oreal.config import describe
    from oreal.training.config import TrainConfig, build_config

    assert TrainConfig().balance_tokens is True
    assert build_config(None, ["balance_tokens=false"]).balance_tokens is False
    assert "same number of tokens" in dict(describe(TrainConfig))["balance_tokens"]
