"""Honest measurement: sample K responses per problem, grade them, report pass@1/pass@k/maj@k."""
from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from math import comb

from . import distributed as dist_utils
from .data.prompts import PromptConfig, render
from .data.records import Problem
from .rollout import SamplingConfig
from .rollout.lengths import fit_max_new_tokens, is_auto, token_lengths
from .verify import count_statuses


# The seed every evaluation of a policy uses unless told otherwise: `oreal eval`, the demo's
# before/after table and training's periodic evaluations draw the same samples.
EVAL_SEED = 12345

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(extracted: list[str | None], correct: list[bool]) -> bool:
    """Is the most common extracted answer (first seen wins ties) a correct one?"""
    keys = ["".join(e.split()) if e else None for e in extracted]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return False
    best = max(counts.values())
    winner = next(k for k in keys if k is not None and counts[k] == best)
    return any(c for k, c in zip(keys, correct) if k == winner)


def sample_and_grade(engine, tokenizer, problems: list[Problem], verifier, k: int,
                     sampling: SamplingConfig, prompt: PromptConfig | None = None,
                     seed: int | list[int] = 0, batch_prompts: int | None = None,
                     timings: dict | None = None, calls: int = 0):
    """Yield (problem, K rollouts, K verdicts) for every problem, sampling `batch_prompts`
    prompts at a time (all at once when None) and grading each chunk in one batch across the
    verifier's workers. `seed`: one for the run, or one per problem. `timings` (optional) gains
    the seconds spent in "sample" and "grade". `calls`: the engine is called at least this many
    times, the missing calls with no prompts (under FSDP2 each call gathers the weights, a
    collective: every rank must make as many). Shared by evaluation, pass-rate measurement and
    the trainer, so all three grade alike."""
    step = batch_prompts or max(1, len(problems))
    timings = timings if timings is not None else {}
    starts = list(range(0, len(problems), step))
    for s in starts + [len(problems)] * (calls - len(starts)):
        chunk = problems[s:s + step]
        t0 = time.perf_counter()
        groups = engine.sample([render(p.prompt, tokenizer, prompt) for p in chunk], k, sampling,
                               seed=seed[s:s + step] if isinstance(seed, list) else seed + s)
        t1 = time.perf_counter()  # the engines return host lists: the device work is done
        verdicts = grade(chunk, groups, verifier, k)
        timings["sample"] = timings.get("sample", 0.0) + t1 - t0
        timings["grade"] = timings.get("grade", 0.0) + time.perf_counter() - t1
        yield from zip(chunk, groups, verdicts)


def grade(problems: list[Problem], groups: list[list], verifier, k: int) -> list[list]:
    """The verdicts of each problem's K rollouts, graded in one batch per extraction mode across the
    verifier's workers."""
    by_extract: dict[str, list[int]] = {}
    for i, p in enumerate(problems):
        by_extract.setdefault(p.extract, []).append(i)
    verdicts: list[list] = [[] for _ in problems]
    for mode, idx in by_extract.items():
        data = {}
        if getattr(verifier, "reads_problems", False):  # TRL's or veRL's functions: the data row, the token ids
            data = {"problems": [problems[i] for i in idx for _ in groups[i]],
                    "completion_ids": [r.response_ids for i in idx for r in groups[i]]}
        flat = verifier.verify_batch([(problems[i].gold, r.text, r.finished) for i in idx for r in groups[i]],
                                     extract=mode, questions=[problems[i].question for i in idx for _ in groups[i]],
                                     **data)
        for n, i in enumerate(idx):
            verdicts[i] = flat[n * k:(n + 1) * k]
    return verdicts


def fit_sampling(sampling: SamplingConfig, engine, tokenizer, problems: list[Problem],
                 prompt: PromptConfig | None = None,
                 key: str = "sampling.max_new_tokens") -> tuple[SamplingConfig, str | None]:
    """`sampling` with max_new_tokens=auto resolved for these problems on this engine: what its
    max_model_len leaves after the longest prompt, at most 1024 (`rollout.lengths.fit_max_new_tokens`),
    and the line that says so (None: a number given, kept)."""
    if not is_auto(sampling.max_new_tokens):
        return sampling, None
    from dataclasses import replace

    lengths = token_lengths(tokenizer, [render(p.prompt, tokenizer, prompt) for p in problems])
    n, said = fit_max_new_tokens(sampling.max_new_tokens, lengths, engine.max_model_len, key=key)
    return replace(sampling, max_new_tokens=n), said


def measure_pass_rates(problems: list[Problem], engine, tokenizer, verifier, k: int, sampling: SamplingConfig,
                       prompt: PromptConfig | None = None, batch: int = 64, seed: int = 0,
                       progress: bool = False) -> list[Problem]:
    """Fill in each problem's `pass_rate` (correct out of K samples), for difficulty balancing."""
    from tqdm import tqdm

    sampling = fit_sampling(sampling, engine, tokenizer, problems, prompt)[0]

    with tqdm(total=len(problems), desc="passrate", unit="q", file=sys.stderr, disable=not progress) as bar:
        for p, _, verdicts in sample_and_grade(engine, tokenizer, problems, verifier, k, sampling, prompt,
                                               seed, batch):
            p.pass_rate = sum(v.correct for v in verdicts) / k
            bar.update(1)
    return problems


def evaluate(engine, tokenizer, problems: list[Problem], verifier, k: int = 1,
             sampling: SamplingConfig | None = None, prompt: PromptConfig | None = None,
             seed: int = 0, batch_prompts: int = 64, progress: bool = False,
             keep_samples: int = 0) -> dict:
    """pass@1 / pass@k / maj@k of K samples per problem, and by subject, level and skill. Under
    torch.distributed every rank must call it with the same problems: each samples and grades its
    contiguous share and every rank returns the summary of the whole set, as one process would."""
    sampling = fit_sampling(sampling or SamplingConfig(), engine, tokenizer, problems, prompt)[0]  # auto: fitted
    rows = dist_utils.all_gather_list(_graded_share(engine, tokenizer, problems, verifier, k, sampling, prompt,
                                                    seed, batch_prompts, progress, keep_samples))
    per_problem, verdicts_all = [], []
    for p, (verdicts, _) in zip(problems, rows):
        verdicts_all.extend(verdicts)
        per_problem.append((p, [v.correct for v in verdicts], [v.extracted for v in verdicts]))
    samples = [{"id": p.id, "question": p.question, "gold": p.gold, "response": text, "correct": vs[0].correct}
               for p, (vs, text) in zip(problems[:keep_samples], rows)]

    def summarise(rows):
        n = len(rows)
        if n == 0:
            return {"n": 0}
        return {
            "n": n,
            "pass@1": sum(sum(c) / len(c) for _, c, _ in rows) / n,
            "pass@k": sum(pass_at_k(len(c), sum(c), k) for _, c, _ in rows) / n,
            "maj@k": sum(majority_correct(e, c) for _, c, e in rows) / n,
        }

    out = summarise(per_problem)
    st = count_statuses(verdicts_all)
    out.update(k=k, unfinished=st["unfinished"], no_answer=st["no_answer"], timeouts=st["timeout"],
               temperature=sampling.temperature)
    groups: dict[str, list] = defaultdict(list)
    for row in per_problem:
        p = row[0]
        if p.subject:
            groups[f"subject={p.subject}"].append(row)
        if p.level:
            groups[f"level={p.level}"].append(row)
        for sk in p.skills:
            groups[f"skill={sk}"].append(row)
    out["by_group"] = {g: summarise(rows) for g, rows in sorted(groups.items())}
    if keep_samples:
        out["samples"] = samples
    return out


def _graded_share(engine, tokenizer, problems, verifier, k, sampling, prompt, seed, batch_prompts, progress,
                  keep_samples) -> list[tuple[list, str | None]]:
    """(K verdicts, the first response's text where it is kept) of each problem of this rank's
    contiguous share [lo, hi), as data-parallel rollouts shard questions (`shard_range`). Problem
    i has seed + i, as one seed for the call gives it on every engine but hf_generate (which then
    samples each problem alone), so the samples do not depend on the split; every rank makes as
    many engine calls as the largest share needs."""
    from tqdm import tqdm

    rank, world = dist_utils.rank_world()
    lo, hi = dist_utils.shard_range(len(problems), rank, world)
    largest = -(-len(problems) // world)  # the last rank's share
    calls = -(-largest // (batch_prompts or max(1, largest)))
    rows = []
    with tqdm(total=hi - lo, desc="eval", unit="q", file=sys.stderr, disable=not progress) as bar:
        for i, (_, group, verdicts) in enumerate(sample_and_grade(
                engine, tokenizer, problems[lo:hi], verifier, k, sampling, prompt, [seed + j for j in range(lo, hi)],
                batch_prompts, calls=calls), start=lo):
            rows.append((verdicts, group[0].text if i < keep_samples else None))
            bar.update(1)
    return rows
