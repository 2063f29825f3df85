"""A grading worker: reads JSON requests on stdin, answers JSON lines on stdout.

Started by `oreal.verify.pool` as `python -m oreal.verify._worker`. It runs Math-Verify in
its main thread (Math-Verify's own timeouts use SIGALRM, which only works there), under an
address-space cap, and with sympy's `parse_expr` path replaced by `oreal.verify.arith` (a
bounded arithmetic parser) so that model text is never evaluated as Python.

Plain-text answers (`auto`, `gsm8k`) are read whole: an expression is graded by its value
(`1/2` is 0.5, `10-3` is 7), and a number that the text carries on into a larger expression
(`3x`, `5/7x`, `2π`, `5 + x`) is refused - the answer is incorrect, never its leading number.
"""
from __future__ import annotations

import json
import re
import resource
import sys
from functools import lru_cache

from . import arith

# Euler's number and the imaginary unit set upright (`\mathrm{e}`, ISO style): latex2sympy reads
# them as text, so `2\mathrm{e}` would parse as 2 and `3+4\mathrm{i}` as 7. Written as the bare
# letters they are E and i. Applied alike to golds and answers; linear-time (no nested quantifiers).
_UPRIGHT_CONSTANT = re.compile(
    r"\\(?:mathrm|textrm|text|operatorname|mathup|mathit)\s*\{\s*([ei])\s*\}|\\mathrm\s+([ei])(?![A-Za-z])")


def _bare_constants(s: str) -> str:
    if "\\" not in s:
        return s

    def repl(m: re.Match) -> str:
        letter = m.group(1) or m.group(2)
        before = " " if m.start() > 0 and s[m.start() - 1].isalpha() else ""
        after = " " if m.end() < len(s) and s[m.end()].isalnum() else ""
        return before + letter + after

    return _UPRIGHT_CONSTANT.sub(repl, s)


class _Refused(Exception):
    """The final plain-text answer is an expression oreal does not read (or a number that the text
    carries on into one): the whole parse gives no answer, not an earlier number."""


_refusals: list[str] = []  # what the current auto-mode parse refused, for the verdict's detail
_NUMBER_GROUPS = ("integer1", "decimal1", "integer2", "decimal2", "decimal3", "integer3", "percent")


def _safe_parse_expr(expr: str):
    """Stands in for Math-Verify's `parse_expr_cached` (sympy's parse_expr, which evals)."""
    value = arith.evaluate(expr)
    if value is None:
        raise ValueError("not an arithmetic expression oreal reads")
    return value


def _sentence_end(expr: str) -> int:
    """Where the expression's line or sentence ends: a newline, or a '.' followed by a space (the
    expression pattern admits both, so 'Answer: 12.\\n(2) ...' would run into the next line)."""
    cut = len(expr)
    nl = expr.find("\n")
    if nl >= 0:
        cut = nl
    i = expr.find(". ", 0, cut)
    if i >= 0:
        cut = i + 1
    return cut


def _shown(text: str, start: int, end: int) -> str:
    """The refused answer as the verdict shows it: `3x`, `5 + x`, `5/7x` (its line, briefly)."""
    tail = text[end:end + 16].split("\n")[0]
    if tail[:1] not in (" ", "\t"):
        tail = tail.split(None, 1)[0] if tail.strip() else ""
    return (text[start:end] + tail).strip()


def _make_extract_expr(original):
    def refuse(shown: str):
        _refusals.append(shown)
        raise _Refused(shown)

    def extract_expr(match: re.Match):
        groups = match.groupdict()
        text = match.string
        expr = groups.get("expr")
        if expr:
            start = match.start("expr")
            cut = _sentence_end(expr)
            # a full stop, trailing spaces and the stars of **bold** are not part of it
            body = expr[:cut].rstrip(" \t.*")
            value = arith.evaluate(body)
            if value is None:
                refuse(body.strip())
            if cut == len(expr) and arith.continues_expression(text, start + cut):
                refuse(_shown(text, start, start + cut))
            return value, body.strip()
        ends = [match.end(g) for g in _NUMBER_GROUPS if groups.get(g)]
        if ends:
            start = min(match.start(g) for g in _NUMBER_GROUPS if groups.get(g))
            end = max(ends)
            if arith.continues_expression(text, end):
                refuse(_shown(text, start, end))
        return original(match)

    return extract_expr


def _setup(memory_mb: int) -> None:
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import math_verify.parser as mv_parser

    # Math-Verify's ExprExtractionConfig reads a plain-text expression with sympy.parse_expr (which
    # evals): it goes to oreal's arithmetic parser instead. `extract_match` looks `extract_expr` up
    # in the module at call time, so the wrapper below is what it calls.
    mv_parser.parse_expr_cached = _safe_parse_expr
    if not getattr(mv_parser.extract_expr, "_oreal", False):
        wrapped = _make_extract_expr(mv_parser.extract_expr)
        wrapped._oreal = True
        mv_parser.extract_expr = wrapped


def main() -> None:
    memory_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    inner_timeout = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    _setup(memory_mb)
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    latex_only = [LatexExtractionConfig()]
    auto_targets = [LatexExtractionConfig(), ExprExtractionConfig()]

    def _parse(text: str, targets):
        return parse(text, targets, parsing_timeout=inner_timeout, raise_on_error=False)

    @lru_cache(maxsize=65536)
    def parse_gold(gold: str):
        return _parse("\\boxed{" + _bare_constants(gold) + "}", latex_only)

    def equal(a, b) -> bool:
        return bool(verify(a, b, timeout_seconds=inner_timeout, raise_on_error=False))

    def grade(req: dict) -> dict:
        gold = parse_gold(req["gold"])
        if not gold:
            return {"status": "bad_input", "correct": False, "extracted": None,
                    "detail": "gold answer does not parse"}
        if req["kind"] == "auto":
            _refusals.clear()
            pred = _parse(_bare_constants(req["text"]), auto_targets)
            if _refusals:
                shown = _refusals[-1][:80]
                return {"status": "ok", "correct": False, "extracted": shown,
                        "detail": "final answer is not a number or an arithmetic expression: " + shown}
            if not pred:
                return {"status": "no_answer", "correct": False, "extracted": None}
            return {"status": "ok", "correct": equal(gold, pred), "extracted": pred[-1]}
        if req["kind"] == "expr":  # a gsm8k answer that is not a plain number: read whole, by value
            cand = req["cand"]
            value = arith.evaluate(cand)
            if value is None:
                return {"status": "ok", "correct": False, "extracted": cand,
                        "detail": "answer is not a number or an arithmetic expression"}
            return {"status": "ok", "correct": equal(gold, [value]), "extracted": cand}
        cands = req["cands"]
        parsed = [_parse("\\boxed{" + _bare_constants(c) + "}", latex_only) for c in cands]
        last = parsed[-1]
        if not last:
            return {"status": "ok", "correct": False, "extracted": cands[-1],
                    "detail": "answer does not parse"}
        # Several different boxed answers: a hedge, unless they are all the same value.
        for other, text in zip(parsed[:-1], cands[:-1]):
            if not other or not equal(other, last):
                return {"status": "ok", "correct": False, "extracted": cands[-1],
                        "detail": "hedge: several different boxed answers"}
        return {"status": "ok", "correct": equal(gold, last), "extracted": cands[-1]}

    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            res = grade(req)
        except MemoryError:
            res = {"status": "error", "correct": False, "extracted": None,
                   "detail": "memory limit"}
        except Exception as e:  # any parser bug is one item's error, never the worker's end
            res = {"status": "error", "correct": False, "extracted": None,
                   "detail": f"{type(e).__name__}: {e}"[:300]}
        out.write(json.dumps(res) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
