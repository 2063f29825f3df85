"""`oreal verify`: one answer on the command line, or a JSONL file of them."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..verify.verifier import EXTRACT_MODES
from . import HelpFormatter, positive_float, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help="grade answers against gold answers", formatter_class=HelpFormatter,
                       epilog="Exit codes: 0 graded (the verdicts say correct or not), 1 unreadable input or "
                              "no line that could be graded, 2 bad usage or an unwritable --output (checked "
                              "before grading).")
    p.add_argument("--gold", help="the gold answer (one answer on the command line)")
    p.add_argument("--response", help="the response to grade against --gold")
    p.add_argument("--input", help="JSONL with gold, response, optional id, question and finished")
    p.add_argument("--output", help="JSONL written in input order, one verdict per input line")
    p.add_argument("--extract", default="boxed", choices=EXTRACT_MODES, help="how the answer is found")
    p.add_argument("--workers", type=positive_int, default=2, help="grading worker processes")
    p.add_argument("--timeout", type=positive_float, default=10.0, help="seconds per answer before it is a timeout")
    p.add_argument("--judge-url", help="OpenAI-compatible base URL of an optional LLM judge")
    p.add_argument("--judge-model", default="judge", help="the judge's model name")
    p.set_defaults(func=run)


def _judge(args):
    if not args.judge_url:
        return None
    import os

    from ..verify.judge import JudgeConfig, LLMJudge

    return LLMJudge(JudgeConfig(base_url=args.judge_url, model=args.judge_model,
                                api_key=os.environ.get("OREAL_JUDGE_API_KEY", "EMPTY")))


def _read_lines(path: str) -> list[tuple[dict | None, str | None]]:
    """(record, error) per non-empty line; a bad line becomes an error, never an exception."""
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                rows.append(({"line": n}, f"line {n}: not valid JSON ({e})"))
                continue
            if not isinstance(rec, dict):
                rows.append(({"line": n}, f"line {n}: expected a JSON object"))
            elif "gold" not in rec or "response" not in rec:
                missing = [k for k in ("gold", "response") if k not in rec]
                rows.append((rec, f"line {n}: missing field(s) {', '.join(missing)}"))
            elif not isinstance(rec.get("finished", True), bool):
                rows.append((rec, f"line {n}: 'finished' must be true or false"))
            else:
                rows.append((rec, None))
    return rows


def run(args) -> int:
    from ..verify import Verifier

    if args.input is None:
        if args.gold is None or args.response is None:
            print("oreal verify: give --gold and --response, or --input and --output", file=sys.stderr)
            return 2
        with Verifier(workers=1, timeout=args.timeout, judge=_judge(args)) as v:
            print(json.dumps(v.verify(args.gold, args.response, extract=args.extract).to_dict()))
        return 0
    if args.output is None:
        print("oreal verify: --input needs --output", file=sys.stderr)
        return 2
    from ..preflight import writable_file

    writable_file(args.output, f"--output {args.output}")  # before the grading
    try:
        rows = _read_lines(args.input)
    except OSError as e:
        print(f"oreal verify: cannot read {args.input}: {e}", file=sys.stderr)
        return 1
    good = [(i, rec) for i, (rec, err) in enumerate(rows) if err is None]
    verdicts = {}
    chunk = 256
    from tqdm import tqdm

    with Verifier(workers=args.workers, timeout=args.timeout, judge=_judge(args)) as v, \
            tqdm(total=len(good), desc="verify", unit="ans", file=sys.stderr,
                 disable=len(good) < 1000) as bar:
        for s in range(0, len(good), chunk):
            part = good[s:s + chunk]
            batch = [(r["gold"], r["response"], r.get("finished", True)) for _, r in part]
            questions = [r.get("question", "") for _, r in part]
            for (i, _), verdict in zip(part, v.verify_batch(batch, extract=args.extract,
                                                             questions=questions)):
                verdicts[i] = verdict
            bar.update(len(part))
    try:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as out:
            for i, (rec, err) in enumerate(rows):
                if err is not None:
                    row = dict(rec, correct=False, status="bad_input", extracted=None, seconds=0.0,
                               detail=err)
                else:
                    d = verdicts[i].to_dict()
                    row = dict(rec, **d)
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    except OSError as e:
        print(f"oreal verify: cannot write {args.output}: {e}", file=sys.stderr)
        return 1
    print(summary_line(rows, verdicts, args.output))
    if not verdicts:  # nothing was graded: a failure, whatever the file's verdict lines say
        first = next((err for _, err in rows if err is not None), "the file is empty")
        print(f"oreal verify: no line of {args.input} could be graded ({first})", file=sys.stderr)
        return 1
    return 0


def summary_line(rows, verdicts: dict, output: str) -> str:
    """`graded 800 of 802 lines: 512 correct, ...; 2 bad lines (first: ...)`."""
    from collections import Counter

    statuses = Counter(v.status for v in verdicts.values())
    correct = sum(v.correct for v in verdicts.values())
    bad = [err for _, err in rows if err is not None]
    parts = [f"graded {len(verdicts)} of {len(rows)} lines: {correct} correct, {len(verdicts) - correct} not"]
    other = {k: n for k, n in sorted(statuses.items()) if k != "ok"}
    if other:
        parts.append("(" + ", ".join(f"{n} {k}" for k, n in other.items()) + ")")
    text = " ".join(parts)
    if bad:
        text += f"; {len(bad)} bad line{'s' if len(bad) > 1 else ''} (first: {bad[0]})"
    return text + f"; wrote {output}"
