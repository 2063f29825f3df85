"""`oreal sft [CONFIG] [key=value ...]`: teacher-forced SFT (also rebuilds the embedded policy)."""
from __future__ import annotations

import json

from . import HelpFormatter, config_and_overrides


def add_parser(sub) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning (also builds the embedded model)",
                       formatter_class=HelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (none: the defaults of oreal.recipes.sft.SFTConfig)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=500 out=runs/sft")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import load_config
    from ..recipes.sft import SFTConfig, run_sft
    from ..verify import Verifier

    cfg_path, overrides = config_and_overrides(args.config, args.overrides)
    cfg = load_config(SFTConfig, cfg_path, overrides)
    with Verifier(workers=2) as v:
        summary = run_sft(cfg, verifier=v)
    print(json.dumps(summary, indent=2))
    return 0
