"""Fault injection for the crash tests: `OREAL_FAULT=point@step` SIGKILLs this process when the
run reaches that point (`step_end`, `checkpoint_write`), so a test can kill a run at an exact
instant and check that it resumes to the bit. Unset, it does nothing."""
from __future__ import annotations

import os
import signal


def inject(point: str, step: int) -> None:
    if os.environ.get("OREAL_FAULT") == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
