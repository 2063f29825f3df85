"""Checkpoints that survive a kill at any instant, and resume to the bit.

A checkpoint is a directory `checkpoints/step_0000012/` holding the policy and credit model as plain
HF directories (usable elsewhere as they are), `trainer_state.pt` (optimisers, schedulers, RNG
states, sampler position, counters) and `manifest.json` (the SHA-256 of every file), written last.
It is assembled in a temporary directory, flushed to disk and renamed into place, so a crash
during a save leaves the previous checkpoints untouched; a directory whose manifest is missing or
whose files do not match it is damaged, and resume falls back to the one before it.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import faults
from .errors import CheckpointError

MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        restore_cuda_rng(state["cuda"], torch.cuda.device_count(), torch.cuda.set_rng_state)


def restore_cuda_rng(states: list, device_count: int, set_state) -> int:
    """Each visible device gets its saved generator state; returns how many did. A checkpoint
    saved where more GPUs were visible (every visible device's state is saved) restores the first
    `device_count` (`set_rng_state_all` raised IndexError); devices beyond the saved keep theirs."""
    n = min(len(states), device_count)
    for i in range(n):
        set_state(states[i], i)
    return n


# --------------------------------------------------------------------------- writing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:07d}"


def staging_dir(root: str | Path, step: int) -> Path:
    """Where a checkpoint is assembled before its rename; every rank can name it (sharded saves)."""
    return Path(root) / f".tmp-{step_dir(root, step).name}-staging"


def stage(root: str | Path, step: int) -> Path:
    """Create an empty staging directory for `step` (rank 0 only) and return it."""
    tmp = staging_dir(root, step)
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {step_dir(root, step)}: {e}") from None
    return tmp


def commit(root: str | Path, step: int, meta: dict | None = None, keep_last: int = 2,
           keep: set[int] | None = None) -> Path:
    """Seal a filled staging directory (rank 0 only): hash every file into a manifest, flush, and
    rename it to `root/step_NNNNNNN`. Older checkpoints beyond the newest `keep_last` are removed,
    except the steps in `keep` (the best one). Raises CheckpointError on any OS error."""
    root = Path(root)
    final, tmp = step_dir(root, step), staging_dir(root, step)
    try:
        faults.inject("checkpoint_write", step)
        files = _files(tmp)
        manifest = {"step": step, **(meta or {}),
                    "files": {str(p.relative_to(tmp)): _sha256(p) for p in files}}
        for p in files:  # data on disk before the manifest that vouches for it
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        for d in {p.parent for p in files} | {tmp}:
            _fsync_dir(d)
        old = None
        if final.exists():  # re-saving a step (after a resume): move the old copy aside first
            old = root / f".old-{final.name}-{os.getpid()}"
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {e}") from None
    prune(root, keep_last, keep or set())
    return final


def save_checkpoint(root: str | Path, step: int, write: Callable[[Path], None], meta: dict | None = None,
                    keep_last: int = 2, keep: set[int] | None = None, staged: bool = False) -> Path:
    """Write a checkpoint atomically: `write(tmp_dir)` fills the staging directory (already made
    and partly filled by other ranks when `staged`), then `commit` seals and renames it. Raises
    CheckpointError on any OS error."""
    tmp = staging_dir(root, step) if staged else stage(root, step)
    try:
        write(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {step_dir(root, step)}: {e}") from None
    return commit(root, step, meta, keep_last, keep)


def prune(root: Path, keep_last: int, keep: set[int]) -> None:
    """Remove leftovers of interrupted saves and all but the newest `keep_last` checkpoints."""
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    steps = list_checkpoints(root)
    if keep_last > 0:
        for s, path in steps[:-keep_last]:
            if s not in keep:
                shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint directory under root, oldest first (not validated)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(out)


def validate(path: str | Path) -> str | None:
    """None if the checkpoint is complete and every file matches its manifest, else why not."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest (the save did not finish)"
    except (OSError, ValueError) as e:
        return f"unreadable manifest: {e}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "manifest lists no files"
    for rel, digest in files.items():
        p = path / rel
        if not p.is_file():
            return f"{rel} is missing"
        if _sha256(p) != digest:
            return f"{rel} does not match its checksum"
    return None


def find_latest(root: str | Path, log: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint that validates; damaged newer ones are skipped with a warning."""
    for step, path in reversed(list_checkpoints(root)):
        problem = validate(path)
        if problem is None:
            return path
        msg = f"checkpoint {path} is damaged ({problem}); falling back to an earlier one"
        if log:  # said once: on the run's log when there is one, else as a Python warning
            log("warning: " + msg)
        else:
            warnings.warn(msg, stacklevel=2)
    return None


def load_trainer_state(path: str | Path) -> dict:
    try:
        return torch.load(Path(path) / "trainer_state.pt", map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"cannot read {path}/trainer_state.pt: {e}") from None


def resolve_resume(root: str | Path, resume: str, log: Callable[[str], None] | None = None) -> Path | None:
    """The checkpoint that `resume` names: 'auto' is the newest one under `root` that validates
    (None when there is none: a fresh start), else a path that must validate."""
    if resume == "auto":
        path = find_latest(root, log)
        if path is None and log:
            log(f"resume=auto: no usable checkpoint in {root}; starting from step 0")
        return path
    problem = validate(resume)
    if problem:
        raise CheckpointError(f"cannot resume from {resume}: {problem}")
    return Path(resume)
