"""The `oreal` command line. Each subcommand is a module here: `add_parser(sub)` declares its
arguments, `run(args)` does the work with the library's recipes and returns an exit code.
The errors a user can cause become one line on stderr and the exit code in
`oreal.errors.EXIT_CODES`, here and nowhere else."""
from __future__ import annotations

import argparse
import faulthandler
import os
import sys

from .. import __version__
from ..errors import EXIT_CODES, INTERRUPTED
from ..training.threads import limit_openmp_spin


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help shows its default (a None default, meaning 'not given', is not shown)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.nargs in ("*", "?"):
            return action.help
        return super()._get_help_string(action)


class KeysHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's lines as written (the list of config keys)."""


class Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit 2, as every other mistake: argparse's own
    prints the usage block first. Subcommands' parsers are of this class too (argparse makes them
    with the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def with_config_keys(parser: argparse.ArgumentParser, epilog: str) -> None:
    """`--help` ends with every training config key and its help, built only when help is printed
    (the config imports torch; building the parser must not)."""
    import textwrap

    def format_help():
        from ..config import describe
        from ..training.config import TrainConfig

        keys = "\n".join(f"  {k:<32} {h}" for k, h in describe(TrainConfig))
        parser.epilog = f"{textwrap.fill(epilog, 100)}\n\nconfig keys (key=value):\n{keys}"
        return argparse.ArgumentParser.format_help(parser)

    parser.format_help = format_help


def build_parser() -> argparse.ArgumentParser:
    # Building the parser imports no torch/transformers: `oreal --help` and `oreal verify` stay fast.
    from . import config, data, demo, evaluate, plan, report, sft, train, verify

    parser = Parser(prog="oreal", description="OREAL: RL from outcome rewards for math",
                    formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"oreal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (demo, train, plan, sft, evaluate, report, verify, data, config):
        command.add_parser(sub)
    return parser


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a float > 0 (a timeout of 0 would grade everything a timeout)."""
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def unit_float(text: str) -> float:
    """argparse type: a float in (0, 1] (top-p)."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def config_and_overrides(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG] [key=value ...]`: a first argument that holds `=` and names no file is an override
    (`oreal config show steps=7`, `oreal sft steps=5`), not a config to read."""
    from pathlib import Path

    if config and "=" in config and not Path(config).exists():
        return None, [config, *overrides]
    return config, list(overrides)


def exit_code(e: BaseException) -> int | None:
    """The exit code of an error a user can cause, or None for a bug (which keeps its traceback)."""
    return next((code for cls, code in EXIT_CODES.items() if isinstance(e, cls)), None)


def _says(message: str) -> None:
    """A refusal or an interruption on stderr, once per launch. Under torchrun every rank meets the
    same config and data and raises the same error: rank 0 prints it and leaves it in the launch's
    store; another rank prints its own (marked with its rank) only where rank 0's differs or has not
    come within a few seconds (an error of that rank alone: its device, its node's files)."""
    import os

    rank, world = os.environ.get("RANK") or "0", int(os.environ.get("WORLD_SIZE") or 1)
    store = _launch_store() if world > 1 else None
    key = f"oreal/said/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    said = None
    try:
        if rank == "0" and store is not None:
            store.set(key, message)
        elif store is not None:
            from datetime import timedelta

            store.wait([key], timedelta(seconds=10))
            said = store.get(key).decode()
    except Exception:  # no store, or rank 0 said nothing in time: this rank says it
        pass
    if rank == "0" or said != message:
        print(message if rank == "0" else f"[rank {rank}] {message}", file=sys.stderr)


def _launch_store():
    """A client of the key-value store of the torchrun launch (MASTER_ADDR:MASTER_PORT), or None."""
    import os
    from datetime import timedelta

    try:
        from torch.distributed import TCPStore

        return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                        timeout=timedelta(seconds=10))
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    limit_openmp_spin()  # before torch loads OpenMP
    # a log line reaches a pipe (`| tee`, a supervisor, a test) when it is printed, not when 8 KB
    # have piled up: a Ctrl-C sent on seeing a line must land in the phase that printed it
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a rank torchrun reports as SIGABRT/SIGSEGV shows its Python stack
        faulthandler.enable()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse's own error, with the way to say it when the command takes key=value
        flags = [a for a in unknown if a.startswith("--")]
        hint = ""
        if flags and hasattr(args, "overrides"):
            hint = (f"; config keys are given as key=value after the config, e.g. "
                    f"{flags[0][2:].split('=')[0].replace('-', '_')}=...")
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    if args.command != "verify":  # the verifier loads no model: keep it free of transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-file load/save bars drown the training log
    name = " ".join(filter(None, [args.command, getattr(args, "data_command", None),
                                  getattr(args, "config_command", None)]))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # a Ctrl-C outside training's own handler, or a second one inside it
        _says(f"\noreal {name}: interrupted; nothing more was saved")
        return INTERRUPTED
    except Exception as e:
        code = exit_code(e)
        if code is None:
            raise
        _says(f"oreal {name}: {e}")
        return code
