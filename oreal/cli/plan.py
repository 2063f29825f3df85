"""`oreal plan CONFIG [key=value ...] [--gpus N] [--gpu-memory GB]`: the memory a run needs on each
GPU, by part and by phase, from the policy's config.json and the data's longest prompt (no
weights load). Exit 0 when it fits (or no budget is given), 3 when it does not."""
from __future__ import annotations

from . import HelpFormatter, config_and_overrides, positive_int

DOES_NOT_FIT = 3


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="the memory of a training run per GPU, by part and phase, before it starts",
                       formatter_class=HelpFormatter)
    p.add_argument("config", nargs="?", default=None, help="YAML config (none: the built-in defaults; 'demo': the "
                                                           "demo's)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. micro_batch_tokens=16384")
    p.add_argument("--gpus", type=positive_int, default=1, help="GPUs (torchrun ranks) the run shards over")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB of memory on each GPU (0: print only)")
    p.add_argument("--prompt-tokens", type=positive_int, default=None,
                   help="plan for prompts of this many tokens (default: the longest prompt of the data, rendered by "
                        "the policy's tokenizer; with this, a directory holding only config.json is enough)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..plan import GiB, plan_config
    from ..training.config import build_config

    import os

    path, overrides = config_and_overrides(args.config, args.overrides)
    # the config's `auto` settings resolve for the launch planned (torchrun with --gpus ranks),
    # unless this process is a rank of a launch itself; the environment is left as it was
    world = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = world or str(args.gpus)
    if path == "demo":
        from ..recipes.demo import demo_config_path

        path = demo_config_path()
    try:
        cfg = build_config(path, overrides)
    finally:
        if world is None:
            del os.environ["WORLD_SIZE"]
    memory = plan_config(cfg, args.gpus, args.gpu_memory, prompt_tokens=args.prompt_tokens)
    where = f"{args.gpus} GPU{'s' if args.gpus > 1 else ''} of {args.gpu_memory:g} GiB" if args.gpu_memory else "no budget"
    print(f"oreal plan: policy {cfg.policy}, {where}, device={cfg.device}, fsdp={cfg.fsdp}, "
          f"mixed_precision={cfg.mixed_precision}, activation_checkpointing={cfg.activation_checkpointing}, "
          f"micro-batch of {memory.tokens} tokens\n")
    print(memory.table())
    refusal = memory.refusal()
    if refusal:
        print(f"\n{refusal}")
        return DOES_NOT_FIT
    return 0
