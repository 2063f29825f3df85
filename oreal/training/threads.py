"""How many torch threads a CPU run uses.

Measured on 2 cores (`docs/notebook.md`, "Torch threads"): the demo's first 40 steps take 39 s
with 2 threads and 62 s with 1 on an idle machine, but 564 s with 2 threads and 61 s with 1 while
another process holds a core: a tiny model's many short parallel regions wait for a thread that
is not scheduled. So by default (`threads=0`) a run takes the cores that are idle when it starts
(sampled from /proc/stat over a quarter of a second; the load average lags by minutes) and keeps
that count: a different count can change a result's last bits (a 300-step demo whose count
followed the load from step to step ended at 0.773 where the fixed 2 threads give 0.755), so a
resume reuses the run's count and the demo fixes `threads: 2`. `oreal`'s command line also sets
GOMP_SPINCOUNT=10000 (unless set): OpenMP threads then spin less before they sleep, which keeps a
2-thread run from collapsing when another process takes a core.
"""
from __future__ import annotations

import os
import time


def limit_openmp_spin() -> None:
    """Call before torch loads OpenMP: a waiting thread then spins 10k rounds, not 300k, before it
    sleeps (GOMP_SPINCOUNT, unless set). On 2 cores with another process on one, 40 demo steps
    take 102 s instead of 564 s (46 s instead of 39 s when idle). This module imports no torch."""
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_fraction(window: float = 0.25) -> float:
    """The share of all CPUs busy over the next `window` seconds (the load average elsewhere)."""
    a = _cpu_times()
    if a is None:
        try:
            return min(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
        except OSError:
            return 0.0
    time.sleep(window)
    b = _cpu_times()
    total = b[1] - a[1]
    return (b[0] - a[0]) / total if total > 0 else 0.0


def auto_threads(cores: int | None = None, busy: float | None = None, reserved: int = 0) -> int:
    """The idle cores now (`cores` x (1 - busy share)), less `reserved` (the rollout workers'
    threads, on rank 0), at least 1, shared out among the processes torchrun started on this machine."""
    cores = usable_cores() if cores is None else cores
    busy = busy_fraction() if busy is None else busy
    free = round(cores * (1.0 - busy)) - reserved
    per_rank = max(1, (cores - reserved) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(per_rank, free))

