"""The errors a user can cause. Each carries a one-line message that names what to fix; the
command line prints it (no traceback) and exits with the code in `EXIT_CODES`."""
from __future__ import annotations


class ConfigError(ValueError):
    """An unknown config key, a value of the wrong type, or settings that do not go together."""


class DataError(ValueError):
    """A data file or record that cannot be read (the message names the file, line and field)."""


class ModelError(ValueError):
    """A model directory that does not exist or holds no loadable model."""


class RunDirError(ValueError):
    """A run directory that cannot be used: not writable, or holding an earlier run that the
    user has not asked to replace."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (full disk, unwritable directory) or read."""


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. non-finite losses step after step, an unwritable run directory)."""


# usage errors exit 2 (as argparse does), failures of the work itself exit 1
EXIT_CODES: dict[type[Exception], int] = {ConfigError: 2, RunDirError: 2, DataError: 1, ModelError: 1,
                                          CheckpointError: 1, TrainingError: 1}
# Ctrl-C that stops a command at once (the second one in training, or any outside it): 128 + SIGINT
INTERRUPTED = 130
