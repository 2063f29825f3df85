"""Running the `oreal` command line as a user does: a fresh interpreter per command."""
import subprocess
import sys


def oreal(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oreal.cli", *args], capture_output=True, text=True, **kw)


def oreal_all(*commands, **kw) -> list[subprocess.CompletedProcess]:
    """Independent commands run at once (each spends seconds importing torch), results in order."""
    procs = [(args, subprocess.Popen([sys.executable, "-m", "oreal.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, **kw)) for args in commands]
    outputs = [p.communicate(timeout=300) for _, p in procs]
    return [subprocess.CompletedProcess(args, p.returncode, *out) for (args, p), out in zip(procs, outputs)]
