"""`oreal demo`: the main job, OREAL on the embedded policy with a before/after table."""
from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path

from . import HelpFormatter, positive_int

DEFAULT_OUT = "runs/demo"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: OREAL on the embedded model, before/after table",
                       formatter_class=HelpFormatter,
                       epilog="The settings are oreal/configs/demo.yaml (`oreal config show demo`). A run "
                              "directory that holds an earlier run is never replaced without --overwrite: "
                              f"with the default --out the demo writes to {DEFAULT_OUT}-2, -3, ... instead. "
                              "Exit codes: 0 done, 1 failed, 2 bad usage, 130 / 143 stopped by SIGINT (Ctrl-C) / SIGTERM.")
    p.add_argument("--out", default=None, help=f"run directory [{DEFAULT_OUT}]")
    p.add_argument("--steps", type=positive_int, default=None, help=f"OREAL steps [{_demo_steps()}, from the demo config]")
    p.add_argument("--seed", type=int, default=0, help="seed of the run (a rerun on the same machine gives the same numbers)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the demo config, e.g. algo.name=grpo")
    p.set_defaults(func=run)


def _demo_steps() -> int:
    """The demo config's steps, read for the help text (YAML only: building the parser imports no torch)."""
    from importlib import resources

    import yaml

    return yaml.safe_load((resources.files("oreal") / "configs" / "demo.yaml").read_text())["steps"]


def choose_out(out: str | None, overwrite: bool, resuming: bool, log=print) -> str:
    """The run directory: --out as given; the default one unless it holds an earlier run, then the
    first free `runs/demo-N` (said out loud). An explicit --out over a run needs --overwrite."""
    from ..errors import RunDirError
    from ..training.rundir import earlier_run

    if overwrite or resuming:
        return out or DEFAULT_OUT
    if out is not None:
        found = earlier_run(out)
        if found:
            raise RunDirError(f"--out {out} holds an earlier run ({', '.join(found)}): pass --overwrite to "
                              f"replace it, resume=auto to continue it, or another --out")
        return out
    if not earlier_run(DEFAULT_OUT):
        return DEFAULT_OUT
    n = 2
    while earlier_run(f"{DEFAULT_OUT}-{n}"):
        n += 1
    log(f"{DEFAULT_OUT} holds an earlier run; this one goes to {DEFAULT_OUT}-{n} "
        f"(--overwrite replaces {DEFAULT_OUT} instead)")
    return f"{DEFAULT_OUT}-{n}"


def resume_command(out: str, args) -> str:
    """The user's own command again, pointed at the run that stopped, with resume=auto."""
    cmd = ["oreal", "demo", "--out", out, "--seed", str(args.seed)]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    cmd += [o for o in args.overrides if not o.startswith(("resume=", "overwrite="))] + ["resume=auto"]
    return shlex.join(cmd)


def run(args) -> int:
    from ..recipes.demo import run_demo

    resuming = any(o.startswith("resume=") and o != "resume=" for o in args.overrides)
    out = choose_out(args.out, args.overwrite, resuming)
    overrides = list(args.overrides) + (["overwrite=true"] if args.overwrite else [])
    try:
        summary = run_demo(out, args.steps, args.seed, overrides)
    except KeyboardInterrupt:
        if (Path(out) / "final" / "policy").exists():
            print(f"\noreal demo: interrupted during the evaluation; the trained policy is in {out}/final/policy "
                  f"(evaluate it with: oreal eval --run {out})", file=sys.stderr)
        elif (Path(out) / "checkpoints").exists():
            print(f"\noreal demo: interrupted; continue with: {resume_command(out, args)}", file=sys.stderr)
        else:
            print("\noreal demo: interrupted before the first checkpoint; nothing was saved", file=sys.stderr)
        return 128 + signal.SIGINT
    if summary.get("interrupted"):
        print(f"oreal demo: stopped by {summary['interrupted']} after a checkpoint; continue with: "
              f"{resume_command(out, args)}", file=sys.stderr)
        return 128 + getattr(signal, summary["interrupted"])
    return 0
