"""DAPO's dynamic sampling (`algo.refill_rounds`, `oreal.training.refill`): which groups a step
keeps, bounded rounds, the seeds; and on the embedded policy: B questions kept per step, the first
in draw order, a step without a refill the same as with refills off, a run killed and resumed
landing on the same bits, and two ranks refilling as one process."""
import json
import signal
import subprocess
import sys

import pytest
import torch

from oreal.algo import AlgoConfig
from oreal.config import ConfigError
from oreal.data import Problem
from oreal.rollout import Rollout
from oreal.training.batch import RolloutBatch
from oreal.training.refill import kept_prefix, needs_refill, question_seeds, sample_rounds
from oreal.training.config import build_config

from test_resume import _run, _weights, data  # noqa: F401  (data: the resume tests' module fixture)

K = 4


# --------------------------------------------------------------------------- the pure logic


def test_kept_prefix_cuts_after_the_bth_survivor_in_draw_order():
    assert kept_prefix([True, True, True, True], 4) == 4  # everything survives: the whole batch
    assert kept_prefix([False, True, False, False], 4) == 4  # too few: all of it
    assert kept_prefix([], 4) == 0
    # rounds of 4: 1 survivor, then 2, then 3 (one too many): cut after the 4th survivor (index 9)
    drawn = [False, True, False, False] + [True, False, False, True] + [False, True, True, True]
    assert kept_prefix(drawn, 4) == 10
    assert sum(drawn[:10]) == 4 and drawn[9]  # exactly B, the last one kept is the B-th


def test_needs_refill_is_bounded_by_the_rounds_and_stops_at_b():
    assert needs_refill(1, 4, 0, 2) and needs_refill(3, 4, 1, 2)
    assert not needs_refill(3, 4, 2, 2)  # rounds spent
    assert not needs_refill(4, 4, 0, 2) and not needs_refill(5, 4, 1, 2)  # enough
    assert not needs_refill(0, 4, 0, 0)  # off


def test_round_zero_seeds_are_the_steps_seeds_as_before_and_refill_seeds_collide_with_none():
    assert question_seeds(7, 3, 4) == [(7 * 1_000_003 + 3 * 10_007 + b) % 2**62 for b in range(4)]
    seen = [s for step in range(1, 201) for r in range(4) for s in question_seeds(0, step, 16, r)]
    assert len(set(seen)) == len(seen)
    assert question_seeds(0, 5, 4, 1) != question_seeds(1, 5, 4, 1)  # the run's seed counts
    assert all(0 <= s < 2**62 for s in seen)


def _rewards(pattern: str) -> torch.Tensor:
    """One group per character: 'm' mixed (survives the filter), 'r' all right, 'w' all wrong."""
    rows = {"m": [1.0, 0.0, 0.0, 1.0], "r": [1.0] * K, "w": [0.0] * K}
    return torch.tensor([rows[c] for c in pattern])


def _survivors(rewards):
    from oreal.algo.selection import pass_rate_filter

    return torch.nonzero(pass_rate_filter(rewards)).flatten().tolist()


class _Fake:
    """`draw` and `rollout` for `sample_rounds`: round i's rewards follow patterns[i]; the
    questions are numbered in draw order; (rank, world) shards each round as the trainer does."""

    def __init__(self, patterns, b=4, rank=0, world=1):
        self.patterns, self.b, self.rank, self.world = patterns, b, rank, world
        self.drawn, self.rounds = 0, []

    def draw(self):
        qs = [Problem(f"q{self.drawn + i}", "?", "1") for i in range(self.b)]
        self.drawn += self.b
        return qs, 1  # one boosted each

    def rollout(self, questions, refill_round):
        from oreal.distributed import shard_range

        self.rounds.append(refill_round)
        lo, hi = shard_range(len(questions), self.rank, self.world)
        groups = [[Rollout(b, k, [0], [1], q.id, True) for k in range(K)] for b, q in enumerate(questions[lo:hi])]
        stats = {"response_tokens": 10 * len(questions), "rollout_seconds": 1.0}
        return RolloutBatch(questions, groups, _rewards(self.patterns[refill_round]), lo, hi, stats)

    def sample(self, max_rounds):
        return sample_rounds(self.draw, self.rollout, self.b, max_rounds)


def test_no_refill_when_everything_survives_the_batch_is_round_zeros():
    f = _Fake(["mmmm", "mmmm"])
    got = f.sample(3)
    assert f.rounds == [0] and got.metrics["refill_rounds"] == got.metrics["refill_samples"] == 0
    assert got.metrics["refill_seconds"] is not None
    assert got.batch.local is None and got.batch.rewards is got.rewards  # round 0's batch itself
    off = _Fake(["wwmm"]).sample(0)
    assert off.metrics["refill_rounds"] == 0 and off.metrics["refill_seconds"] is None  # off: not measured
    assert [q.id for q in off.batch.questions] == ["q0", "q1", "q2", "q3"]


def test_a_round_that_overshoots_keeps_the_first_b_survivors_in_draw_order():
    f = _Fake(["wmrw", "mwrm", "wmmm", "mmmm"])
    got = f.sample(3)
    assert f.rounds == [0, 1, 2]  # 1, then 3, then 6 survivors: round 3 never runs
    m = got.metrics
    assert (m["refill_rounds"], m["refill_samples"], m["boosted"]) == (2, 2 * 4 * K, 3)
    assert m["response_tokens"] == 3 * 40 and m["rollout_seconds"] == 3.0  # summed over the rounds
    # everything drawn reaches the booster and the step's reward, the overshoot included
    assert [q.id for q in got.questions] == [f"q{i}" for i in range(12)] and len(got.rewards) == 12
    assert m["reward"] == pytest.approx(got.rewards.mean().item())
    # trained: the drawn groups up to the 4th survivor (q9); q10 and q11 are dropped
    assert [q.id for q in got.batch.questions] == [f"q{i}" for i in range(10)]
    assert torch.equal(got.batch.rewards, got.rewards[:10])
    assert _survivors(got.batch.rewards) == [1, 4, 7, 9]  # exactly B, the first ones drawn
    assert all(got.batch.rollout(b, 0).text == f"q{b}" for b in range(10))


def test_the_rounds_are_bounded_and_the_step_trains_on_what_there_is():
    f = _Fake(["wwww", "rrrr", "wrwm", "mwww"])
    got = f.sample(2)
    assert f.rounds == [0, 1, 2] and got.metrics["refill_rounds"] == 2
    assert len(got.batch.questions) == 12  # every group drawn, one of them mixed: fewer than B kept
    assert _survivors(got.batch.rewards) == [11]


def test_joined_rounds_under_data_parallelism_hold_each_ranks_share_of_each_round():
    patterns = ["wmrw", "mwrm", "wmmm"]
    ranks = [_Fake(patterns, rank=r, world=2).sample(3).batch for r in range(2)]
    assert ranks[0].local == {0: 0, 1: 1, 4: 2, 5: 3, 8: 4, 9: 5}
    assert ranks[1].local == {2: 0, 3: 1, 6: 2, 7: 3}  # q10, q11: past the cut
    for r, batch in enumerate(ranks):
        assert [b for b in range(10) if batch.is_local(b)] == sorted(batch.local)
        assert all(batch.rollout(b, k).text == f"q{b}" for b in batch.local for k in range(K))
        assert batch.local_pairs() == [(b, k) for b in sorted(batch.local) for k in range(K)]
        assert torch.equal(batch.rewards, ranks[0].rewards)  # the whole batch on every rank


def test_refill_needs_the_filter_and_a_count():
    assert AlgoConfig(refill_rounds=2).refill_rounds == 2
    with pytest.raises(ConfigError, match="refill_rounds: must be at least 0"):
        AlgoConfig(refill_rounds=-1)
    with pytest.raises(ConfigError, match="algo.filter is off"):
        AlgoConfig(refill_rounds=1, filter=False)
    with pytest.raises(ConfigError, match="preset 'grpo'"):  # the baselines keep every group
        AlgoConfig(name="grpo", refill_rounds=1)
    assert AlgoConfig(name="grpo", refill_rounds=1, filter=True).refill_rounds == 1


# --------------------------------------------------------------------------- on the embedded policy

_TIME = {"seconds", "elapsed", "eta", "tokens_per_s", "rollout_seconds", "sample_seconds", "grade_seconds",
         "credit_seconds", "policy_seconds", "optim_seconds", "refill_seconds"}


def _untimed(metrics: dict) -> dict:
    """The metrics with each time replaced by whether it was measured."""
    return {k: (v is not None if k in _TIME else v) for k, v in metrics.items()}


class _ByQuestion:
    """A verifier whose rewards depend on the question alone: those in `uniform` (texts) all
    wrong, every other one half right (of its 2 samples, the first right): which groups survive
    the filter is known before the step, whatever the policy samples."""

    def __init__(self):
        self.uniform: set[str] = set()

    def verify_batch(self, items, extract="boxed", questions=None, **_):
        from oreal.verify import Verdict

        return [Verdict(n % 2 == 0 and q not in self.uniform, "ok") for n, q in enumerate(questions)]


def _steps(data, tmp_path, n, uniform_at, *extra):
    """`n` steps of 2 questions, 2 samples each, where the questions the sampler draws at positions
    `uniform_at` are all wrong: each step's metrics (times: whether measured) and trajectories,
    each round's (step, round, question positions in the sampler's order), the sampler's order
    and the trainer."""
    from oreal.recipes.train import Trainer
    from oreal.training.sampler import QuestionSampler

    cfg = build_config(str(data / "cfg.yaml"), [f"out={tmp_path}", "threads=1", "batch_questions=2", "samples=2",
                                                  "algo.actor_freeze_steps=0", "skills.enabled=true",
                                                  "dump_per_step=50", *extra])
    verifier, rounds = _ByQuestion(), []
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    order = [tr.problems[i] for i in QuestionSampler(len(tr.problems), cfg.seed).next(4 * n * 5)]
    assert len({p.question for p in order}) == len(order)
    verifier.uniform = {order[i].question for i in uniform_at}
    position = {id(p): i for i, p in enumerate(order)}
    real = tr.rollout

    def rollout(questions, refill_round=0):
        rounds.append((tr.state.step, refill_round, [position[id(q)] for q in questions]))
        return real(questions, refill_round)

    tr.rollout = rollout
    try:
        out = []
        for _ in range(n):
            r = tr.step()
            out.append((_untimed(r.metrics), r.trajectories))
    finally:
        tr.close()
    return out, rounds, order, tr


def test_refill_keeps_b_questions_first_in_draw_order_and_changes_nothing_else(data, tmp_path):
    # the sampler's questions 2, 3 and 5 are all wrong: step 2's round 0 keeps none, its refill
    # round 1 (questions 4, 5) one, round 2 (6, 7) two: the step keeps 4 and 6, and 7 is dropped
    off, off_rounds, _, _ = _steps(data, tmp_path / "off", 4, (2, 3, 5))
    on, on_rounds, order, tr = _steps(data, tmp_path / "on", 4, (2, 3, 5), "algo.refill_rounds=4")
    assert off_rounds == [(1, 0, [0, 1]), (2, 0, [2, 3]), (3, 0, [4, 5]), (4, 0, [6, 7])]
    assert on_rounds == [(1, 0, [0, 1]), (2, 0, [2, 3]), (2, 1, [4, 5]), (2, 2, [6, 7]), (3, 0, [8, 9]),
                         (4, 0, [10, 11])]
    assert [m["kept_questions"] for m, _ in off] == [2, 0, 1, 2]
    assert [m["kept_questions"] for m, _ in on] == [2, 2, 2, 2]  # more kept per step
    assert [(m["refill_rounds"], m["refill_samples"]) for m, _ in on] == [(0, 0), (2, 8), (0, 0), (0, 0)]
    assert all(m["refill_rounds"] == m["refill_samples"] == 0 and m["refill_seconds"] is False for m, _ in off)
    assert all(m["refill_seconds"] is True for m, _ in on)
    # step 2 trains on the batch of questions 2..6 (7 overshot), the selected rows those of 4 and 6
    _, traj = on[1]
    assert {t["id"] for t in traj} == {order[i].id for i in range(2, 7)}
    assert {t["id"] for t in traj if t["selected"]} == {order[4].id, order[6].id}
    assert on[1][0]["reward"] == pytest.approx(3 / 12)  # over every response sampled, question 7's too
    # the booster saw every question drawn, the refills' and the dropped one's too
    assert tr.booster.tracker.visits == {order[i].id: 1 for i in range(12)}
    # step 1 needed no refill: the same step as with refill off, bit for bit
    assert on[0] == (dict(off[0][0], refill_seconds=True), off[0][1])


def test_a_run_with_refills_killed_and_resumed_lands_on_the_same_bits(data):
    refill = ["algo.refill_rounds=3", "batch_questions=2", "samples=2", "steps=4"]
    ref = _run(data, data / "refill_ref", *refill)
    assert ref.returncode == 0
    out = data / "refill_killed"
    p = _run(data, out, *refill, fault="step_end@3", check=False)
    assert p.returncode == -signal.SIGKILL
    _run(data, out, *refill, "resume=auto")
    rows = [[json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()]
            for r in (data / "refill_ref", out)]
    assert [r["step"] for r in rows[1]] == [1, 2, 3, 4]
    assert sum(r["refill_rounds"] for r in rows[0]) > 0  # the runs did refill, after the resume too
    assert any(r["refill_rounds"] for r in rows[0][2:])
    for a, b in zip(*rows):
        assert _untimed(a) == _untimed(b)
    assert (data / "refill_ref" / "trajectories.jsonl").read_text() == (out / "trajectories.jsonl").read_text()
    wa, wb = _weights(data / "refill_ref"), _weights(out)
    for m in wa:
        assert all(torch.equal(wa[m][k], wb[m][k]) for k in wa[m]), m


@pytest.mark.slow
def test_two_gloo_ranks_refill_as_one_process(tmp_path):
    from test_distributed import _torchrun, _write_cfg

    env, cli = _write_cfg(tmp_path)
    cli = [*cli, "algo.refill_rounds=3", "batch_questions=2", "samples=2"]
    one = subprocess.run([sys.executable, *cli, f"out={tmp_path / 'one'}"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(env, cli, f"out={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-3000:]
    rows = {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("one", "two")}
    assert any(r["refill_rounds"] for r in rows["one"])
    for a, b in zip(rows["one"], rows["two"]):
        for k in ("reward", "pass_rate", "kept_questions", "selected", "positives", "response_tokens",
                  "refill_rounds", "refill_samples"):
            assert a[k] == b[k], k
        for k in ("credit_loss", "loss", "kl"):
            if a[k] is not None:
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-7), k
