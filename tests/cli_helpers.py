"""Running the `oreal` command line as a user does: a fresh interpreter per command."""
import signal
import subprocess
import sys


def _sigint_default():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# A command a user interrupts with Ctrl-C runs in a terminal's foreground, where SIGINT has its
# default disposition. A test runner started in the background (`cmd &` in a script, some CI)
# has SIGINT ignored, and its children inherit that: Python then keeps ignoring it, and so does
# oreal. Tests that send SIGINT start their command as the foreground would.
AS_FOREGROUND = dict(preexec_fn=_sigint_default)


def oreal(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oreal.cli", *args], capture_output=True, text=True, **kw)


def oreal_all(*commands, **kw) -> list[subprocess.CompletedProcess]:
    """Independent commands run at once (each spends seconds importing torch), results in order."""
    return run_all(*([sys.executable, "-m", "oreal.cli", *args] for args in commands), **kw)


def run_all(*argvs, **kw) -> list[subprocess.CompletedProcess]:
    """Independent processes run at once, results in order."""
    procs = [(argv, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw))
             for argv in argvs]
    outputs = [p.communicate(timeout=300) for _, p in procs]
    return [subprocess.CompletedProcess(argv, p.returncode, *out) for (argv, p), out in zip(procs, outputs)]
