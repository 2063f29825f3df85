"""The `oreal` command line. Each subcommand is a module here: `add_parser(sub)` declares its
arguments, `run(args)` does the work with the library's recipes and returns an exit code.
The errors a user can cause become one line on stderr and the exit code in
`oreal.errors.EXIT_CODES`, here and nowhere else."""
from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_CODES


def build_parser() -> argparse.ArgumentParser:
    from . import data, demo, evaluate, report, sft, train, verify

    parser = argparse.ArgumentParser(prog="oreal", description="OREAL: RL from outcome rewards for math")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (demo, train, sft, evaluate, report, verify, data):
        command.add_parser(sub)
    return parser


def exit_code(e: BaseException) -> int | None:
    """The exit code of an error a user can cause, or None for a bug (which keeps its traceback)."""
    return next((code for cls, code in EXIT_CODES.items() if isinstance(e, cls)), None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file load/save bars drown the training log
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        code = exit_code(e)
        if code is None:
            raise
        name = " ".join(filter(None, [args.command, getattr(args, "data_command", None)]))
        print(f"oreal {name}: {e}", file=sys.stderr)
        return code
