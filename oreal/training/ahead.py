"""Rollouts ahead (`max_staleness` S > 0): the batches of the next S steps are sampled by rollout
workers (`oreal.rollout.worker`, their own processes with their own copy of the weights) while the
trainer trains. The trainer's side is this file; `Trainer` calls it at four points:

    ahead.start(version)             # spawn the workers; then publish the current weights
    ahead.publish(version, named)    # after each step: the new weights (broadcast) or only the number
    ahead.submit(request)            # the batch of step j, drawn as soon as its weights are published
    got = ahead.take(step)           # wait for step's batch (restarting a dead or hung worker)

Versions and admission control: version v is the trainer's weights after step v (0: as loaded).
The batch of step j is submitted right after version j - 1 - S is published, so the worker samples it
from exactly that version (commands run in order): step j trains on weights S steps old (fewer in the
first S steps), never older. A batch is never started from weights it may not train on, so nothing
is sampled to be thrown away (SkyRL's choice, not veRL's drop of stale samples); `take` still checks
the version a batch carries and refuses one older than S.

Exact resume: before a checkpoint at step c, `settle(c)` waits for every batch sampled from a version
before c (the next S steps', which the trainer needs next anyway); the checkpoint holds them and the
requests sampled from version c itself (`state_dict`), whose weights it holds too. A resume publishes
version c to fresh workers and submits those requests again: each prompt's seed is fixed, so they
sample to the bit what the lost workers would have. A worker that dies or stops beating for
`worker_timeout` seconds is killed and the workers restarted from the newest weights; the requests in
flight are sampled again from those (fresher, so still within S) and the run goes on."""
from __future__ import annotations

import dataclasses
import os
import queue
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass

import torch

from .. import faults
from ..data import Problem
from ..errors import CheckpointError, ConfigError, TrainingError
from ..rollout.worker import (Channel, Sample, Sampled, Version, Weights, WorkerSpec, as_record, broadcast,
                              flat_by_dtype, from_record, launch, weight_group)

MAX_RESTARTS = 3  # restarts in a row without a batch coming back before the run stops
STARTUP_S = 900.0  # the least time a worker has to load its model before it first beats (vLLM takes minutes)


@dataclass
class Request:
    step: int
    questions: list[Problem]
    boosted: int  # how many of them the skill booster chose
    prompts: list[str]
    seeds: list[int]
    after: int  # the version published last when it was submitted: the one it is sampled from


@dataclass
class Taken:
    """A step's batch as the trainer trains on it (the same on every rank)."""
    request: Request
    groups: list  # [question][k] Rollout
    version: int
    worker_seconds: float  # the workers' busy time on it
    wait_seconds: float  # the trainer's wait for it
    restarts: int  # worker restarts while waiting


def worker_spec(cfg, model_dir: str, world: int) -> WorkerSpec:
    """The rollout workers' settings from the run's config (the weight group's filled in at start)."""
    from ..rollout import options_class, resolve_engine

    n = cfg.rollout_workers
    device = cfg.rollout_device if cfg.rollout_device != "auto" else cfg.device.split(":")[0]
    if device == "cuda":  # one GPU a worker, after the trainer's ranks on this machine
        first = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        devices = tuple(f"cuda:{first + i}" for i in range(n))
        if torch.cuda.is_available() and first + n > torch.cuda.device_count():
            raise ConfigError(f"rollout_workers={n} need GPUs cuda:{first} to cuda:{first + n - 1} after the trainer's "
                              f"{first}; this machine has {torch.cuda.device_count()} (rollout_device names another)")
    else:
        devices = (device,) * n
    engine = resolve_engine(cfg.engine, devices[0])
    return WorkerSpec(model_dir, engine, cfg.dtype, devices, cfg.rollout_threads, cfg.seed,
                      options=getattr(cfg, engine) if options_class(engine) else None, hang_s=cfg.rollout_timeout,
                      timeout_s=cfg.dist_timeout)


def admit(step: int, version: int, staleness: int) -> None:
    """Refuse to train step `step` on a batch sampled from weights more than `staleness` steps old
    (version v: the weights after step v). Admission control makes it impossible; this says so if not."""
    if step - 1 - version > staleness:
        raise TrainingError(f"step {step}'s batch was sampled from version {version} of the weights, more than "
                            f"max_staleness={staleness} steps old")


def split_prompts(n: int, workers: int) -> list[tuple[int, int]]:
    """Each worker's contiguous share [lo, hi) of a batch's n prompts."""
    return [(i * n // workers, (i + 1) * n // workers) for i in range(workers)]


def merge(parts: list[Sampled]) -> Sampled:
    """The workers' shares of one batch, in worker order, as one `Sampled`."""
    errors = [p.error for p in parts if p.error]
    versions = {p.version for p in parts}
    if len(versions) != 1:  # every worker runs the same commands in the same order
        raise TrainingError(f"rollout workers sampled step {parts[0].step} from versions {sorted(versions)}")
    return Sampled(parts[0].step, parts[0].version, [g for p in parts for g in p.groups],
                   max(p.seconds for p in parts), errors[0] if errors else None)


class Workers:
    """One start of the rollout workers: their processes and channels, and the trainer's thread that
    broadcasts weights to them (so the trainer never waits for a worker busy sampling to take them)."""

    def __init__(self, spec: WorkerSpec, n: int, store):
        self.started = time.time()
        self.procs = [launch(dataclasses.replace(spec, rank=i + 1)) for i in range(n)]
        self.channels = [Channel(store, spec.group, i + 1, "cmd", "res") for i in range(n)]
        self.sends: queue.Queue = queue.Queue()
        self.error: str | None = None
        self.thread = threading.Thread(target=self._send, args=(spec,), daemon=True, name="oreal-weights")
        self.thread.start()

    def _send(self, spec: WorkerSpec) -> None:
        try:
            # its own connection to the store: the main thread's polls the channels meanwhile
            group = weight_group(spec.store_host, spec.store_port, spec.group, 0, spec.size, spec.timeout_s)
            while (buffers := self.sends.get()) is not None:
                for flat in buffers:
                    broadcast(group, flat)
        except Exception:  # a worker gone mid-broadcast: the trainer sees it dead and restarts them
            self.error = traceback.format_exc()

    def send(self, cmd, buffers: list[torch.Tensor] | None = None) -> None:
        for c in self.channels:
            c.put(cmd)
        if buffers is not None:
            self.sends.put(buffers)

    def results(self) -> list[Sampled]:
        return [msg for c in self.channels if (msg := c.poll()) is not None]

    def dead(self) -> list[int]:
        return [i + 1 for i, p in enumerate(self.procs) if p.poll() is not None]

    def hung(self, timeout_s: float) -> bool:
        """Whether a worker showed no sign of life for `timeout_s` seconds: it beats while it samples,
        after each command and every second while idle; one still loading has `STARTUP_S` at least."""
        now = time.time()
        return any(now - beat > timeout_s if (beat := c.last_beat()) else now - self.started > max(timeout_s, STARTUP_S)
                   for c in self.channels)

    def stop(self, kill: bool = False) -> None:
        if not kill:
            for c in self.channels:
                c.put("stop")
        self.sends.put(None)
        for p in self.procs:
            if kill:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class RolloutsAhead:
    """The trainer's rollouts-ahead state (rank 0 talks to the workers; every rank calls `publish` and
    `take`, which are collectives under torchrun). `spec`: the workers' settings (store and ranks
    filled in by `start`)."""

    def __init__(self, staleness: int, spec: WorkerSpec, k: int, sampling, main: bool, log=print):
        self.staleness, self.spec, self.main, self.log = staleness, spec, main, log
        self.n, self.timeout_s = len(spec.devices), spec.hang_s
        self.k, self.sampling = k, sampling  # K responses a question, sampled with these settings
        self.requests: dict[int, Request] = {}  # submitted, not yet taken (by step)
        self.parts: dict[int, dict[int, Sampled]] = {}  # the workers' shares come back one by one
        self.ready: dict[int, Sampled] = {}  # sampled, not yet taken
        self.version: int | None = None  # the newest published
        self.snapshot: tuple[Weights, list[torch.Tensor]] | None = None  # a restarted worker gets these
        self.workers: Workers | None = None
        self.started = False  # on every rank, from the first step on
        self.store = None
        self.generation = -1
        self.failed_starts = 0

    def start(self) -> None:
        """Spawn the workers (rank 0; every rank marks them started). The weights follow with `publish`."""
        self.started = True
        if not self.main:
            return
        import torch.distributed as dist
        from datetime import timedelta

        if self.store is None:  # the weight group's meeting point, on a free port
            self.store = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=self.spec.timeout_s),
                                       wait_for_workers=False)
        self.generation += 1
        spec = dataclasses.replace(self.spec, store_host="127.0.0.1", store_port=self.store.port,
                                   group=f"oreal-weights-{self.generation}", size=self.n + 1, generation=self.generation)
        self.workers = Workers(spec, self.n, self.store)

    def publish(self, version: int, named, changed: bool = True) -> None:
        """Version `version` of the weights, after the trainer's step `version`: `named` ((name, full
        tensor) pairs, `oreal.rollout.weights.full_weights`; every rank reads them, a collective under
        FSDP2) broadcast to the workers when `changed`, else the same weights under a new number."""
        if changed or self.snapshot is None:
            names, shapes, dtypes, tensors = [], [], [], []
            for name, t in named:
                if self.main:
                    names.append(name)
                    shapes.append(tuple(t.shape))
                    dtypes.append(str(t.dtype).removeprefix("torch."))
                    tensors.append(t)
            if self.main:
                buffers = list(flat_by_dtype(tensors).values())
                self.snapshot = (Weights(version, names, shapes, dtypes), buffers)
                self.workers.send(self.snapshot[0], buffers)
        elif self.main:
            self.snapshot = (dataclasses.replace(self.snapshot[0], version=version), self.snapshot[1])
            self.workers.send(Version(version))
        self.version = version
        faults.inject("weights_push", version)  # a kill while the broadcast may be in flight

    def submit(self, request: Request) -> None:
        """Sample `request` from the newest published weights."""
        self.requests[request.step] = request
        if self.main:
            self._send_sample(request)

    def _send_sample(self, r: Request) -> None:
        for i, (lo, hi) in enumerate(split_prompts(len(r.prompts), self.n)):
            self.workers.channels[i].put(Sample(r.step, r.prompts[lo:hi], r.seeds[lo:hi], self.k, self.sampling))

    def take(self, step: int) -> Taken:
        """Step `step`'s batch, on every rank (rank 0 waits for it and sends it to the others)."""
        from .. import distributed as dist_utils

        if step not in self.requests:  # e.g. a run asked for more steps than the trainer was built for
            raise TrainingError(f"step {step}: no batch was submitted for it (the trainer drew batches up to "
                                f"step {max(self.requests, default=0)})")
        t0 = time.perf_counter()
        faults.inject("rollout_wait", step)  # a kill while the workers sample
        restarts = self._wait(lambda: step in self.ready) if self.main else 0

        def rank0():
            got = self.ready.pop(step)
            if len(got.groups) != len(self.requests[step].prompts):  # never pair responses with other questions
                raise TrainingError(f"step {step}: the rollout workers sent {len(got.groups)} groups for "
                                    f"{len(self.requests[step].prompts)} questions")
            admit(step, got.version, self.staleness)
            return got.groups, got.version, got.seconds
        groups, version, seconds = dist_utils.from_rank0(rank0)
        request = self.requests.pop(step)
        return Taken(request, groups, version, seconds, time.perf_counter() - t0, restarts)

    def settle(self, version: int) -> None:
        """Wait until every batch sampled from a version before `version` is back (before a checkpoint
        at step `version`: those weights are not in it)."""
        if self.main:
            self._wait(lambda: all(s in self.ready for s, r in self.requests.items() if r.after < version))

    def _wait(self, done) -> int:
        """Collect results until `done()`, restarting workers that died or hung; the restarts. On any
        error the workers are killed: none outlives a failed run."""
        try:
            return self._collect(done)
        except BaseException:
            self.close(kill=True)
            raise

    def _collect(self, done) -> int:
        restarts, checked = 0, time.time()
        while not done():
            got = self.workers.results()
            if not got:
                if time.time() - checked > 1.0:  # a worker's health, once a second
                    checked = time.time()
                    if why := self._trouble():
                        restarts += 1
                        self.restart(why)
                time.sleep(0.01)
                continue
            self.failed_starts = 0
            for part in got:
                parts = self.parts.setdefault(part.step, {})
                parts[part.worker] = part
                if len(parts) == self.n and part.step in self.requests:
                    got = merge([parts[i] for i in sorted(self.parts.pop(part.step))])
                    if got.error:  # a prompt too long, a broken engine: not something a restart mends
                        raise TrainingError(f"the rollout worker failed on step {part.step}'s batch:\n{got.error}")
                    self.ready[part.step] = got
        return restarts

    def _trouble(self) -> str | None:
        w = self.workers
        if dead := w.dead():
            return f"rollout worker {dead} died (exit code {[w.procs[i - 1].returncode for i in dead]})"
        if w.error:
            return f"the weight broadcast to the rollout workers failed:\n{w.error}"
        if w.hung(self.timeout_s):
            return f"a rollout worker showed no progress for {self.timeout_s:g} s (rollout_timeout)"
        return None

    def restart(self, why: str) -> None:
        """Kill the workers, start new ones from the newest weights and send them every request in flight."""
        self.failed_starts += 1
        self.workers.stop(kill=True)
        if self.failed_starts > MAX_RESTARTS:
            raise TrainingError(f"{why}; {MAX_RESTARTS} restarts in a row brought no batch back, stopping")
        self.log(f"{why}: restarting the rollout workers from version {self.version} of the weights")
        self.parts.clear()
        self.start()
        msg, buffers = self.snapshot
        self.workers.send(msg, buffers)
        for step in sorted(self.requests):
            if step not in self.ready:
                self._send_sample(self.requests[step])

    def close(self, kill: bool = False) -> None:
        if self.workers is not None:
            self.workers.stop(kill)
            self.workers = None
        self.store = None  # its port closes with it

    # -- checkpoint ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The requests in flight and the batches sampled and not yet taken (call `settle` first)."""
        return {"staleness": self.staleness, "requests": [dataclasses.asdict(r) for r in self.requests.values()],
                "ready": [as_record(s) for s in self.ready.values()]}

    def load_state_dict(self, st: dict) -> None:
        if st.get("staleness") != self.staleness:  # its batches were drawn and sampled for another S
            raise CheckpointError(f"the checkpoint was written with max_staleness={st.get('staleness')}; resume with "
                                  f"that (this run has max_staleness={self.staleness})")
        self.requests = {}
        for r in st["requests"]:
            r = dict(r, questions=[Problem(**q) for q in r["questions"]])
            self.requests[r["step"]] = Request(**r)
        self.ready = {d["step"]: from_record(d) for d in st["ready"]} if self.main else {}  # rank 0 sends them

    def resubmit(self) -> None:
        """After a resume: the restored requests not yet sampled, in step order."""
        if self.main:
            for step in sorted(self.requests):
                if step not in self.ready:
                    self._send_sample(self.requests[step])


__all__ = ["MAX_RESTARTS", "STARTUP_S", "Request", "RolloutsAhead", "Taken", "admit", "merge", "split_prompts", "worker_spec"]
