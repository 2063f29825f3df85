"""`oreal data show`: what the policy will see."""
from __future__ import annotations

import json
import sys

from .prompts import PromptConfig, render
from .records import DataError
from .registry import load


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="inspect problem sets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("show", help="record count, rendered prompts and gold answers")
    s.add_argument("source", help="registry name (math500, gsm8k, curriculum_test, ...) or a path")
    s.add_argument("--data-dir", default=None)
    s.add_argument("--preset", default=None)
    s.add_argument("--n", type=int, default=3, help="how many examples to show")
    s.add_argument("--model", default=None, help="render with this model's tokenizer/chat template")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=show)
    from .passrate import add_parser as add_passrate

    add_passrate(dsub)


def show(args) -> int:
    try:
        res = load(args.source, args.data_dir, preset=args.preset, skip_bad=True)
    except DataError as e:
        print(f"oreal data show: {e}", file=sys.stderr)
        return 1
    tok = None
    if args.model:
        from ..models import load_tokenizer

        tok = load_tokenizer(args.model)
    examples = [{"id": p.id, "question": p.question, "gold": p.gold,
                 "prompt": render(p.question, tok, PromptConfig()),
                 "skills": p.skills, "extract": p.extract} for p in res.problems[: args.n]]
    if args.json:
        print(json.dumps({"name": args.source, "count": len(res.problems),
                          "skipped": res.skipped, "examples": examples}, ensure_ascii=False))
        return 0
    print(f"{args.source}: {len(res.problems)} problems"
          + (f" ({len(res.skipped)} bad rows skipped)" if res.skipped else ""))
    for ex in examples:
        print("-" * 60)
        print(ex["prompt"])
        print(f"[gold: {ex['gold']}]  [extract: {ex['extract']}]")
    for s in res.skipped[:5]:
        print(f"skipped: {s}")
    return 0
