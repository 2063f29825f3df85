"""How many torch threads a CPU run uses.

Measured on 2 cores (`docs/benchmarks.md`, "Torch threads"): the demo's first 40 steps take 39 s
with 2 threads and 62 s with 1 on an idle machine, but 564 s with 2 threads and 61 s with 1 while
another process holds a core: a tiny model's many short parallel regions wait for a thread that
is not scheduled. So by default (`threads=0`) a run takes the cores that are idle when it starts
(sampled from /proc/stat over a quarter of a second; the load average lags by minutes), and after
every step `ThreadGovernor` counts the cores that other processes used during it and follows
them (a job started beside a run must not make it 9x slower); `threads=N` fixes the count. The
thread count did not change a result in those runs.
"""
from __future__ import annotations

import os
import time


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


def auto_threads(cores: int | None = None, busy: float | None = None) -> int:
    """The idle cores now (`cores` x (1 - busy share)), at least 1, shared out among the
    processes torchrun started on this machine."""
    cores = usable_cores() if cores is None else cores
    busy = busy_fraction() if busy is None else busy
    free = round(cores * (1.0 - busy))
    per_rank = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(per_rank, free))


class ThreadGovernor:
    """Re-decides the torch thread count after each step from what *other* processes used:
    all CPUs' busy time (/proc/stat) minus this process's own CPU time, over the step's wall time.
    A no-op where /proc/stat does not exist."""

    def __init__(self, threads: int, cores: int | None = None):
        import torch

        self.torch, self.threads = torch, threads
        self.cores = usable_cores() if cores is None else cores
        self.per_rank = max(1, self.cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._mark = self._now()

    def _now(self):
        sys_times = _cpu_times()
        if sys_times is None:
            return None
        own = os.times()
        return sys_times[0] / self.hz, own.user + own.system, time.monotonic()

    def reset(self) -> None:
        """Start the window now (what ran before training, e.g. an evaluation, does not count)."""
        self._mark = self._now()

    def after_step(self) -> str | None:
        """Adjust the thread count; returns a line to log when it changed."""
        now, before = self._now(), self._mark
        self._mark = now
        if now is None or before is None or now[2] - before[2] < 0.05:
            return None
        others = max(0.0, (now[0] - before[0]) - (now[1] - before[1])) / (now[2] - before[2])
        want = max(1, min(self.per_rank, round(self.cores - others)))
        if want == self.threads:
            return None
        self.threads = want
        self.torch.set_num_threads(want)
        return f"torch threads: {want} (other processes used {others:.1f} of {self.cores} cores during the last step)"
