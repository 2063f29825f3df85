"""A grading worker: reads JSON requests on stdin, answers JSON lines on stdout.

Started by `oreal.verify.pool` as `python -m oreal.verify._worker`. It runs Math-Verify in
its main thread (Math-Verify's own timeouts use SIGALRM, which only works there), under an
address-space cap, and with sympy's `parse_expr` path switched off so that model text is
never evaluated as Python.
"""
from __future__ import annotations

import json
import resource
import sys
from functools import lru_cache


def _refuse_parse_expr(expr: str):
    raise ValueError("parse_expr on model text is disabled in oreal")


def _setup(memory_mb: int) -> None:
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import math_verify.parser as mv_parser

    # Math-Verify's ExprExtractionConfig falls back to sympy.parse_expr (which evals) for
    # non-numeric plain-text answers. Plain numbers are still extracted without it.
    mv_parser.parse_expr_cached = _refuse_parse_expr


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
        return _parse("\\boxed{" + gold + "}", latex_only)

    def equal(a, b) -> bool:
        return bool(verify(a, b, timeout_seconds=inner_timeout, raise_on_error=False))

    def grade(req: dict) -> dict:
        gold = parse_gold(req["gold"])
        if not gold:
            return {"status": "bad_input", "correct": False, "extracted": None,
                    "detail": "gold answer does not parse"}
        if req["kind"] == "auto":
            pred = _parse(req["text"], auto_targets)
            if not pred:
                return {"status": "no_answer", "correct": False, "extracted": None}
            return {"status": "ok", "correct": equal(gold, pred), "extracted": pred[-1]}
        cands = req["cands"]
        parsed = [_parse("\\boxed{" + c + "}", latex_only) for c in cands]
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
