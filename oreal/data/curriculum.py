"""The built-in curriculum: procedurally generated arithmetic word problems.

Every worked solution is a chain of small local steps (`7+5=12,12-3=9. \\boxed{9}`) over
numbers up to a few dozen, so a model of a few million parameters trained from scratch on a
CPU learns it partly in minutes: the starting point for RL has room to improve. Problems are
deterministic by seed, and the split is decided by a hash of the question text, so train and
test never share a question whatever seeds or sizes are asked for.
"""
from __future__ import annotations

import hashlib
import random

from .records import Problem

NAMES = ["Ann", "Ben", "Cara", "Dan", "Eve", "Finn", "Gina", "Hal", "Ivy", "Jack"]
ITEMS = ["apples", "pens", "coins", "books", "cards", "shells", "stamps", "marbles"]
SKILLS = ("add", "sub", "mul", "chain", "story")
DEFAULT_MIX = {"add": 1.0, "sub": 1.0, "mul": 0.6, "chain": 1.4, "story": 1.0}


def _is_test(question: str, test_percent: int) -> bool:
    h = int(hashlib.sha1(question.encode()).hexdigest()[:8], 16)
    return h % 100 < test_percent


def _steps(start: int, ops: list[tuple[str, int]]) -> tuple[str, int]:
    parts, cur = [], start
    for op, n in ops:
        nxt = cur + n if op == "+" else cur - n if op == "-" else cur * n
        parts.append(f"{cur}{op}{n}={nxt}")
        cur = nxt
    return ",".join(parts), cur


def _make(skill: str, rng: random.Random) -> tuple[str, str, int, int]:
    """(question, worked solution, answer, number of steps) for one problem of `skill`."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if skill == "add":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        work, ans = _steps(a, [("+", b)])
        return q, work, ans, 1
    if skill == "sub":
        a = rng.randint(2, 30)
        b = rng.randint(1, a - 1)
        q = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        work, ans = _steps(a, [("-", b)])
        return q, work, ans, 1
    if skill == "mul":
        a, b = rng.randint(2, 9), rng.randint(2, 6)
        q = f"There are {a} boxes with {b} {item} in each box. How many {item} are there?"
        work, ans = _steps(a, [("*", b)])
        return q, work, ans, 1
    if skill == "chain":
        n_ops = rng.randint(2, 4)
        cur = start = rng.randint(1, 20)
        ops = []
        for _ in range(n_ops):
            if cur > 1 and rng.random() < 0.5:
                n = rng.randint(1, min(cur - 1, 20))
                ops.append(("-", n))
                cur -= n
            else:
                n = rng.randint(1, 20)
                ops.append(("+", n))
                cur += n
        expr = str(start) + "".join(f"{op}{n}" for op, n in ops)
        q = f"Compute {expr}."
        work, ans = _steps(start, ops)
        return q, work, ans, n_ops
    if skill == "story":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        c = rng.randint(1, a + b - 1)
        q = (f"{name} has {a} {item}, buys {b} more and then gives away {c}. "
             f"How many {item} does {name} have?")
        work, ans = _steps(a, [("+", b), ("-", c)])
        return q, work, ans, 2
    raise ValueError(f"unknown skill {skill!r}; choose from {SKILLS}")


# A problem's subject is its kind; its skills are the operations its work uses (a word problem's
# skills include `add`): distinct names, so `subject=addition` and `skill=add` never read alike.
SUBJECTS = {"add": "addition", "sub": "subtraction", "mul": "multiplication", "chain": "multi-step",
            "story": "word problem"}

def generate(n: int, split: str = "train", seed: int = 0, mix: dict[str, float] | None = None,
             test_percent: int = 10) -> list[Problem]:
    """`n` distinct problems of `split` ('train' or 'test'), deterministic in (split, seed, mix)."""
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    mix = dict(DEFAULT_MIX if mix is None else mix)
    for s in mix:
        if s not in SKILLS:
            raise ValueError(f"unknown skill {s!r} in mix; choose from {SKILLS}")
    skills = [s for s in mix if mix[s] > 0]
    weights = [mix[s] for s in skills]
    rng = random.Random(f"{split}:{seed}")
    want_test = split == "test"
    seen: set[str] = set()
    out: list[Problem] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10000:
            raise ValueError(f"cannot draw {n} distinct {split} problems with this mix")
        skill = rng.choices(skills, weights)[0]
        q, work, ans, steps = _make(skill, rng)
        if q in seen or _is_test(q, test_percent) != want_test:
            continue
        seen.add(q)
        tags = [skill] + (["add", "sub"] if skill in ("chain", "story") else [])
        out.append(Problem(
            id=f"curriculum-{split}-{hashlib.sha1(q.encode()).hexdigest()[:12]}", question=q,
            gold=str(ans), source="curriculum", level=str(steps), subject=SUBJECTS[skill],
            skills=tags, solution=f"{work}. \\boxed{{{ans}}}",
        ))
    return out


def first_error(response: str, solution: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Where a response to a curriculum problem first departs from its worked solution, as char
    spans in the response: (the wrong number, its step). A step is the text between commas (the
    boxed answer is a step of its own); the wrong number is the digit run holding the first
    differing character (that character alone when it is not a digit). None when the response
    follows the solution to its end or stops before departing from it. The solution of a
    curriculum problem is unique, so this is the ground truth of where a wrong response went wrong.
    """
    m = next((i for i, (a, b) in enumerate(zip(response, solution)) if a != b), min(len(response), len(solution)))
    if m >= len(solution) or m >= len(response):
        return None
    lo, hi = m, m + 1
    if response[m].isdigit():
        while lo > 0 and response[lo - 1].isdigit():
            lo -= 1
        while hi < len(response) and response[hi].isdigit():
            hi += 1
    s_lo = max(response.rfind(",", 0, m), response.rfind(".", 0, m)) + 1
    ends = [i for i in (response.find(",", m), response.find(".", m)) if i >= 0]
    s_hi = min(ends) if ends else len(response)
    return (lo, hi), (s_lo, max(s_hi, hi))


def token_spans(response_ids: list[int], tok) -> list[tuple[int, int]]:
    """The [start, end) characters of each response token in the decoded response text (the
    tokenizer decodes one token at a time; the curriculum's tokens decode to their own text)."""
    spans, pos = [], 0
    for t in response_ids:
        piece = tok.decode([t], skip_special_tokens=True)
        spans.append((pos, pos + len(piece)))
        pos += len(piece)
    return spans


def first_error_token(response_ids: list[int], text: str, solution: str, tok) -> int | None:
    """Index of the response token holding the first character that departs from the solution
    (None: the response never departs from it)."""
    err = first_error(text, solution)
    if err is None:
        return None
    char = err[0][0]
    return next((t for t, (_, end) in enumerate(token_spans(response_ids, tok)) if end > char), None)
