"""The `oreal` command line: every subcommand registers itself here."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oreal", description="OREAL: RL from outcome rewards for math")
    sub = parser.add_subparsers(dest="command", required=True)
    from .data import cli as data_cli
    from .recipes import demo, sft, train
    from .verify import cli as verify_cli

    demo.add_parser(sub)
    train.add_parser(sub)
    sft.add_parser(sub)
    from . import eval_cli, report

    eval_cli.add_parser(sub)
    report.add_parser(sub)
    verify_cli.add_parser(sub)
    data_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file load/save bars drown the training log
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
