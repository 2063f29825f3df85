"""`oreal config show [CONFIG] [key=value ...]`: every training config key with the value a run
would use (the defaults, the file's values and the overrides, after the algorithm preset)."""
from __future__ import annotations

from . import HelpFormatter, config_and_overrides


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="show the training config keys and their values",
                       formatter_class=HelpFormatter)
    csub = p.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    s = csub.add_parser("show", help="print the resolved config as YAML, each key with its help",
                        formatter_class=HelpFormatter)
    s.add_argument("config", nargs="?", default=None,
                   help="YAML config to start from (none: the built-in defaults; 'demo': the demo's)")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algo.name=grpo steps=10")
    s.set_defaults(func=show)


def show(args) -> int:
    from ..config import show_config
    from ..training.config import build_config

    path, overrides = config_and_overrides(args.config, args.overrides)
    if path == "demo":
        from ..recipes.demo import demo_config_path

        path = demo_config_path()
    print(show_config(build_config(path, overrides)))
    return 0
