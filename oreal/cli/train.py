"""`oreal train CONFIG [key=value ...]`: OREAL (or a baseline) from a YAML config."""
from __future__ import annotations

import signal


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a policy with OREAL (or a baseline) from a YAML config")
    p.add_argument("config", help="YAML config (see oreal/configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algo.name=grpo steps=10")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..recipes.train import train
    from ..training.config import build_config
    from ..verify import Verifier

    cfg = build_config(args.config, args.overrides)
    with Verifier(workers=cfg.verifier_workers, timeout=cfg.verifier_timeout) as v:
        trainer, _ = train(cfg, v)
    if trainer.interrupted:
        return 128 + getattr(signal, trainer.interrupted)
    print(f"done: {cfg.out}/final/policy")
    return 0
