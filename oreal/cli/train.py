"""`oreal train CONFIG [key=value ...]`: OREAL (or a baseline) from a YAML config."""
from __future__ import annotations

import signal

from . import KeysHelpFormatter, with_config_keys


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a policy with OREAL (or a baseline) from a YAML config",
                       formatter_class=KeysHelpFormatter)
    with_config_keys(p, "Every config key with the value a run would use: `oreal config show [CONFIG]`. "
                        "Lists take commas: trackers=tensorboard,wandb. Exit codes: 0 done, 1 failed (data, "
                        "model, disk), 2 bad usage or config, 130/143 stopped by SIGINT/SIGTERM after "
                        "writing a checkpoint.")
    p.add_argument("config", help="YAML config (e.g. oreal/configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algo.name=grpo steps=10")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import distributed
    from ..recipes.train import train
    from ..training.config import build_config
    from ..verify import Verifier

    cfg = build_config(args.config, args.overrides)
    custom = cfg.reward.build()  # reward.funcs (TRL-style) or reward.verl; None: the math verifier
    with custom or Verifier(workers=cfg.verifier_workers, timeout=cfg.verifier_timeout) as v:
        result = train(cfg, v)
        result.trainer.close()
    code = 128 + getattr(signal, result.interrupted) if result.interrupted else 0
    if not result.interrupted and result.trainer.rank == 0:  # under torchrun one line, not one per rank
        print(f"done: {cfg.out}/final/policy")
    if distributed.active():
        distributed.end_job(code)  # every rank past its last collective, then out without shutdown's aborts
    return code
