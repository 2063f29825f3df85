"""How many torch threads a CPU run uses.

Measured on 2 cores (`docs/benchmarks.md`, "Torch threads"): the demo's first 40 steps take 39 s
with 2 threads and 62 s with 1 on an idle machine, but 564 s with 2 threads and 61 s with 1 while
another process holds a core: a tiny model's many short parallel regions wait for a thread that
is not scheduled. So by default (`threads=0`) a run takes the cores that are free when it starts
(cores minus the one-minute load average, at least 1), and says so; `threads=N` fixes it. The
thread count did not change a result in those runs (the same numbers with 1 and 2 threads).
"""
from __future__ import annotations

import os


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """The cores not busy with other work right now: cores - round(1-minute load), at least 1,
    shared out among the processes torchrun started on this machine."""
    cores = usable_cores() if cores is None else cores
    cores = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    return max(1, min(cores, cores - round(load)))
