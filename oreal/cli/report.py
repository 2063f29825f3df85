"""`oreal report RUN_DIR`: PNG curves and an HTML page of token-coloured responses."""
from __future__ import annotations

import sys

from . import HelpFormatter, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="plots and an HTML page of token-level credit for a run",
                       formatter_class=HelpFormatter)
    p.add_argument("run_dir", help="a training run directory (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="where to write the report [RUN_DIR/report]")
    p.add_argument("--max-responses", type=positive_int, default=40, help="responses shown, token-coloured")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..report import write_report

    try:
        out = write_report(args.run_dir, args.out, args.max_responses)
    except FileNotFoundError as e:
        print(f"oreal report: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}/index.html and {len(list(out.glob('*.png')))} plots")
    return 0
