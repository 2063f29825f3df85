"""Fault injection for the crash tests: `OREAL_FAULT=point@step` SIGKILLs this process when the
run reaches that point (`step_end`, `checkpoint_write`; with rollouts ahead `rollout_wait`, the trainer
waiting while the worker samples, and `weights_push`, a broadcast in flight; in the first rollout worker,
`worker_sample` kills it and `worker_hang` hangs it mid-sample), so a test can kill a run at an exact
instant and check that it resumes to the bit. Unset, it does nothing."""
from __future__ import annotations

import os
import signal


def inject(point: str, step: int) -> None:
    if os.environ.get("OREAL_FAULT") == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
