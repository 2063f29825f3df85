"""`oreal demo`: the main job, OREAL on the embedded policy with a before/after table."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: OREAL on the embedded model, before/after table")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..recipes.demo import run_demo

    run_demo(args.out, args.steps, args.seed, args.overrides)
    return 0
