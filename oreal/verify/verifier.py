"""The reward: `verify(gold, response)` and the pooled `Verifier`."""
from __future__ import annotations

import atexit
import json
import re
import threading
import time
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction

from ..extract import (
    DEFAULT_FINISH_MARKERS,
    Limits,
    boxed_answers,
    brace_depth,
    graded_part,
    gsm8k_answer,
    is_placeholder,
    is_plain_number,
    normalise_for_hedge,
)
from .pool import WorkerPool

EXTRACT_MODES = ("boxed", "auto", "gsm8k")
STATUSES = ("ok", "no_answer", "unfinished", "timeout", "bad_input", "error")
CACHE_SIZE = 65536  # graded requests remembered (a worker's verdict is a pure function of the request)
CACHEABLE = ("ok", "no_answer", "bad_input")  # timeouts and errors are retried, never remembered
_INTEGER = re.compile(r"-?[0-9]{1,60}")
_DECIMAL = re.compile(r"-?[0-9]{0,60}\.?[0-9]{1,60}")


def decide_without_sympy(gold: str, answer: str) -> bool | None:
    """The verdict when no parser is needed: the same text (spaces aside) is correct; two plain
    integers are compared exactly; two plain decimals that are equal (0.50 vs .5) are correct.
    None: ask Math-Verify (units, LaTeX, decimals that differ, which it may round). A gold written
    as an expression (`2+3`, `1/2`, `\\frac{10}{4}`, `\\mathrm{e}`) is neither a plain integer nor
    a plain decimal, so against any other text it reaches the comparison by value."""
    g, a = "".join(gold.split()), "".join(answer.split())
    if g == a:
        return True
    if _INTEGER.fullmatch(g) and _INTEGER.fullmatch(a):
        return int(g) == int(a)
    if _DECIMAL.fullmatch(g) and _DECIMAL.fullmatch(a) and Fraction(g) == Fraction(a):
        return True
    return None


@dataclass
class Verdict:
    correct: bool
    status: str
    extracted: str | None = None
    seconds: float = 0.0
    detail: str | None = None
    judge_failed: bool = False  # the LLM judge was asked and could not answer; the rule verdict stands

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VerifierConfig:
    workers: int = 2
    timeout: float = 10.0  # hard wall-clock limit per item, enforced by SIGKILL
    memory_mb: int = 1536  # RLIMIT_AS of each worker
    max_items_per_worker: int = 20000  # recycle workers after this many items
    finish_markers: tuple[str, ...] = DEFAULT_FINISH_MARKERS
    hedge_is_wrong: bool = True
    limits: Limits = field(default_factory=Limits)
    cache_size: int = CACHE_SIZE  # worker verdicts remembered per distinct request (0: off)


class Verifier:
    """Grades responses against gold answers in a warm pool of isolated worker processes.

    Safe to call from any thread, and from many at once. Use as a context manager or call
    `close()`; a module-level default instance backs `oreal.verify.verify`.
    """

    def __init__(self, config: VerifierConfig | None = None, judge=None, **overrides):
        cfg = config or VerifierConfig()
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise TypeError(f"unknown verifier option {k!r}")
            setattr(cfg, k, v)
        self.config = cfg
        self.judge = judge  # optional LLMJudge, asked only about rule-rejected answers
        self.pool = WorkerPool(cfg.workers, cfg.timeout, cfg.memory_mb, cfg.max_items_per_worker)
        self._threads = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="oreal-verify")
        self._cache: OrderedDict[str, Verdict] = OrderedDict()  # request -> verdict of the workers
        self._cache_lock = threading.Lock()

    # -- parent-side preparation: cheap string work, decides what (if anything) goes to sympy
    def _prepare(self, gold, response, extract: str, finished: bool) -> Verdict | dict:
        lim = self.config.limits
        if extract not in EXTRACT_MODES:
            return Verdict(False, "bad_input", detail=f"unknown extract mode {extract!r}")
        if isinstance(gold, (int, float)) and not isinstance(gold, bool):
            gold = str(gold)
        if not isinstance(gold, str) or not gold.strip():
            return Verdict(False, "bad_input", detail="gold must be a non-empty string")
        if not isinstance(response, str):
            return Verdict(False, "bad_input", detail="response must be a string")
        if not finished:
            return Verdict(False, "unfinished", detail="response did not finish")
        if len(gold) > lim.answer_chars * 4:
            return Verdict(False, "bad_input", detail="gold answer too long")
        if boxed_answers("\\boxed{" + gold + "}") != [gold.strip()]:
            return Verdict(False, "bad_input", detail="gold answer has unbalanced braces")
        text = graded_part(response, self.config.finish_markers, lim.graded_chars)
        if extract == "auto":
            return {"gold": gold, "kind": "auto", "text": text}
        if extract == "gsm8k":
            ans = gsm8k_answer(text)
            if ans is None:
                return Verdict(False, "no_answer", detail="no '#### N' answer")
            if len(ans) > lim.answer_chars:
                return Verdict(False, "error", extracted=ans[:80] + "...", detail="answer too long")
            if brace_depth(ans) > lim.brace_depth:
                return Verdict(False, "error", extracted=ans[:80], detail="answer nested too deeply")
            if not is_plain_number(ans) and "\\" not in ans:
                # an expression (12/5, 10 - 3) or not a number at all: read whole by the worker's
                # arithmetic parser, never by its leading number
                return {"gold": gold, "kind": "expr", "cand": ans}
            cands = [ans]  # a plain number (quick path below) or LaTeX (\frac{12}{5}): as a box
        else:
            # placeholder boxes ("\\boxed{\\phantom{2}} + 3 = 7") restate the question: not answers
            cands = [c for c in boxed_answers(text) if not is_placeholder(c)]
            if not cands:
                return Verdict(False, "no_answer", detail="no closed \\boxed{} answer")
            # The final answer goes last; distinct earlier ones only matter for the hedge check.
            final = cands[-1]
            others: dict[str, str] = {}
            if self.config.hedge_is_wrong:
                for c in cands[:-1]:
                    if normalise_for_hedge(c) != normalise_for_hedge(final):
                        others[normalise_for_hedge(c)] = c
            cands = list(others.values())[-(lim.max_candidates - 1):] + [final]
        for c in cands:
            if len(c) > lim.answer_chars:
                return Verdict(False, "error", extracted=c[:80] + "...", detail="answer too long")
            if brace_depth(c) > lim.brace_depth:
                return Verdict(False, "error", extracted=c[:80], detail="answer nested too deeply")
        if len(cands) == 1:  # no hedge to check: plain numbers and exact matches need no sympy
            quick = decide_without_sympy(gold, cands[0])
            if quick is not None:
                return Verdict(quick, "ok", extracted=cands[0])
        return {"gold": gold, "kind": "latex", "cands": cands}

    def verify_batch(self, items, extract: str = "boxed", questions=None) -> list[Verdict]:
        """Grade an iterable of `(gold, response)` or `(gold, response, finished)` tuples.

        `questions` (same order) are only used by the optional LLM judge.
        """
        items = list(items)
        t0 = time.perf_counter()
        verdicts: list[Verdict | None] = [None] * len(items)
        pending: list[tuple[int, dict]] = []
        for i, item in enumerate(items):
            gold, response = item[0], item[1]
            finished = item[2] if len(item) > 2 else True
            prep = self._prepare(gold, response, extract, finished)
            if isinstance(prep, Verdict):
                verdicts[i] = prep
            else:
                pending.append((i, prep))
        todo: dict[str, tuple[dict, list[int]]] = {}  # each distinct request is graded once (K samples often agree)
        for i, req in pending:
            key = json.dumps(req, sort_keys=True)
            hit = self._cache.get(key)
            if hit is not None:
                verdicts[i] = replace(hit)
            else:
                todo.setdefault(key, (req, []))[1].append(i)
        if todo:
            # one worker per gold answer: its parse is cached there, and parsed once, not once per worker
            n = self.pool.size
            shards = [[] for _ in range(n)]
            for key, (req, _) in todo.items():
                shards[zlib.crc32(req["gold"].encode()) % n].append(key)
            shards = [sh for sh in shards if sh]
            futures = [self._threads.submit(self._run_shard, [(0, todo[k][0]) for k in sh]) for sh in shards]
            for sh, fut in zip(shards, futures):
                for key, res in zip(sh, fut.result()):
                    if res.status in CACHEABLE and self.config.cache_size:
                        self._remember(key, res)
                    for i in todo[key][1]:
                        verdicts[i] = replace(res)
        if self.judge is not None:
            self._ask_judge(items, verdicts, questions)
        per_item = (time.perf_counter() - t0) / max(1, len(items))
        for v in verdicts:
            if not v.seconds:
                v.seconds = per_item
        return verdicts

    def _remember(self, key: str, verdict: Verdict) -> None:
        with self._cache_lock:
            self._cache[key] = verdict
            if len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)

    def _ask_judge(self, items, verdicts: list[Verdict], questions) -> None:
        """Second opinion on parsed-but-rejected answers; hedges and failures keep the rule verdict."""
        todo = [i for i, v in enumerate(verdicts)
                if v.status == "ok" and not v.correct and v.extracted and not v.detail]
        if not todo:
            return
        with ThreadPoolExecutor(max_workers=self.judge.config.concurrency) as ex:
            answers = ex.map(lambda i: self.judge.judge(
                questions[i] if questions else "", str(items[i][0]), verdicts[i].extracted), todo)
            for i, ok in zip(todo, answers):
                if ok is None:
                    verdicts[i].judge_failed = True
                    verdicts[i].detail = "judge failed; rule verdict kept"
                elif ok:
                    verdicts[i].correct = True
                    verdicts[i].detail = "accepted by LLM judge"

    def _run_shard(self, shard: list[tuple[int, dict]]) -> list[Verdict]:
        t0 = time.perf_counter()
        raw = self.pool.run([req for _, req in shard])
        per_item = (time.perf_counter() - t0) / max(1, len(shard))
        out = []
        for res in raw:
            if res is None:
                out.append(Verdict(False, "timeout", seconds=per_item,
                                   detail=f"grading exceeded {self.config.timeout}s"))
            else:
                out.append(Verdict(bool(res["correct"]), res["status"], res.get("extracted"),
                                   per_item, res.get("detail")))
        return out

    def verify(self, gold, response, extract: str = "boxed", finished: bool = True,
               question: str | None = None) -> Verdict:
        t0 = time.perf_counter()
        prep = self._prepare(gold, response, extract, finished)
        v = prep if isinstance(prep, Verdict) else self._run_shard([(0, prep)])[0]
        if self.judge is not None:
            self._ask_judge([(gold, response)], [v], [question or ""])
        v.seconds = time.perf_counter() - t0
        return v

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        self.pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def count_statuses(verdicts) -> dict[str, int]:
    """How many verdicts have each status in `STATUSES`, plus `judge_failed`."""
    counts = dict.fromkeys(STATUSES, 0)
    counts["judge_failed"] = 0
    for v in verdicts:
        counts[v.status] = counts.get(v.status, 0) + 1
        counts["judge_failed"] += v.judge_failed
    return counts


_default: Verifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> Verifier:
    global _default
    with _default_lock:
        if _default is None:
            _default = Verifier()
            atexit.register(_default.close)
        return _default


def verify(gold, response, extract: str = "boxed", finished: bool = True) -> Verdict:
    """Grade one response against one gold answer in the shared default pool."""
    return default_verifier().verify(gold, response, extract=extract, finished=finished)
