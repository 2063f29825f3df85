"""A persistent pool of grading worker processes with a hard wall-clock limit per item."""
from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import sys
import threading
import time

_REQUEST_BYTES = 48 * 1024  # a chunk never exceeds a pipe buffer, so writes never block


class WorkerDied(RuntimeError):
    pass


DIED = {"status": "error", "correct": False, "extracted": None,
        "detail": "grading worker died (memory limit or killed)"}


class _Worker:
    """One `python -m oreal.verify._worker` child speaking JSON lines."""

    def __init__(self, memory_mb: int, inner_timeout: int, start_timeout: float = 60.0):
        env = {k: v for k, v in os.environ.items() if len(v) < 8192}  # e.g. huge test ids
        env.update(PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oreal.verify._worker", str(memory_mb), str(inner_timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            start_new_session=True,  # a Ctrl-C meant for the trainer must not kill the graders mid-step
        )
        self._buf = b""
        self.items = 0
        if self.read_line(start_timeout) is None:
            self.kill()
            raise WorkerDied("verifier worker did not start")

    def send(self, lines: list[str]) -> None:
        self.proc.stdin.write("".join(lines).encode())
        self.proc.stdin.flush()

    def read_line(self, timeout: float) -> dict | None:
        """Next reply, or None when the worker overran `timeout` or died."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # the worker died mid-item (memory cap, or killed from outside)
                return dict(DIED)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        try:
            self.proc.kill()  # SIGKILL: a worker stuck in sympy does not get a say
        except ProcessLookupError:
            pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:
                pass


class WorkerPool:
    """Thread-safe: any thread may call `run`; each call borrows one worker at a time."""

    def __init__(self, workers: int, timeout: float, memory_mb: int, max_items: int):
        self.size = max(1, workers)
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.max_items = max_items
        self.inner_timeout = max(1, int(timeout / 2))  # Math-Verify's own alarm fires first
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._started = 0
        self._closed = False
        self.restarts = 0

    def _new_worker(self) -> _Worker:
        return _Worker(self.memory_mb, self.inner_timeout)

    def _borrow(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("verifier is closed")
            if self._idle.empty() and self._started < self.size:
                self._started += 1
                start_new = True
            else:
                start_new = False
        if start_new:
            try:
                return self._new_worker()
            except Exception:
                with self._lock:
                    self._started -= 1
                raise
        return self._idle.get()

    def _give_back(self, w: _Worker | None) -> None:
        if w is not None and self.max_items and w.items >= self.max_items:
            w.kill()  # recycle: bounded growth of caches and fragmentation
            w = None
        if w is None:
            with self._lock:
                self._started -= 1
            return
        self._idle.put(w)

    def run(self, requests: list[dict]) -> list[dict | None]:
        """Grade `requests` in order; None marks an item that overran the hard limit."""
        results: list[dict | None] = [None] * len(requests)
        i = 0
        while i < len(requests):
            w = self._borrow()
            chunk: list[str] = []
            size = 0
            j = i
            while j < len(requests):
                line = json.dumps(requests[j]) + "\n"
                if chunk and size + len(line) > _REQUEST_BYTES:
                    break
                chunk.append(line)
                size += len(line)
                j += 1
            try:
                w.send(chunk)
            except (BrokenPipeError, OSError):
                w.kill()
                self._give_back(None)
                self.restarts += 1
                continue
            for k in range(i, j):
                res = w.read_line(self.timeout)
                if res is None:  # overran or died: kill, count a timeout, resend the rest
                    w.kill()
                    w = None
                    self.restarts += 1
                    results[k] = None
                    i = k + 1
                    break
                results[k] = res
                w.items += 1
                if res.get("detail") == DIED["detail"]:  # replace it, grade the rest elsewhere
                    w.kill()
                    w = None
                    self.restarts += 1
                    i = k + 1
                    break
            else:
                i = j
            self._give_back(w)
        return results

    def close(self) -> None:
        with self._lock:
            self._closed = True
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                break
