"""A rollout worker: its own process with its own copy of the policy, sampling the batches of the
steps ahead while the trainer trains (`max_staleness`; the trainer's side is `oreal.training.ahead`).

    proc = launch(spec)   # python -m oreal.rollout.worker: joins the trainer's TCPStore and weight group

It runs the commands the trainer sends on its `Channel` (torch.distributed's TCPStore) in order:
- `Weights(version, names, shapes, dtypes)`: the trainer's new weights, received by a gloo broadcast
  from the trainer (root 0 of a group of the trainer and its workers, met in the same store), one
  flat buffer per dtype, copied into the model; sampling uses them from the next `Sample` on;
- `Version(version)`: a step that changed nothing (a frozen actor): the same weights, a new number;
- `Sample(step, prompts, seeds, k, sampling)`: K responses a prompt, each prompt's with its own
  seed (so a batch sampled here equals the one the trainer's own engine would sample from these
  weights, however it is chunked), sent back as `Sampled` with the version that sampled it;
- "stop": exit.
Sampling goes `spec.chunk` prompts at a time and beats (the wall time of its last progress, in the
store) after each chunk and each command, so the trainer can tell a worker that hangs from one that
works. It exits when its parent is gone (a trainer killed with SIGKILL leaves no worker behind)."""
from __future__ import annotations

import base64
import dataclasses
import faulthandler
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .. import faults


TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
                "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class WorkerSpec:
    model_dir: str  # the policy's HF directory: the architecture (its weights come from the first push)
    engine: str  # a registered engine name, resolved for the device
    dtype: str
    devices: tuple[str, ...]  # one a worker: the number of workers
    threads: int  # torch threads (fixed: the count changes sampling's last bits)
    seed: int
    store_host: str = ""  # the trainer's TCPStore, where the weight group meets
    store_port: int = 0
    group: str = ""  # the group's prefix in the store (one per start of the workers)
    rank: int = 0  # this worker's rank in the group (the trainer is 0)
    size: int = 0  # the trainer and its workers
    generation: int = 0  # 0 for the first workers, +1 at each restart (a fault fires in generation 0 only)
    chunk: int = 8  # prompts a `sample` call, between heartbeats
    options: object = None  # the engine's own settings (`vllm.*` for engine=vllm)
    hang_s: float = 300.0  # seconds without progress before the trainer counts a worker as hung
    timeout_s: float = 600.0  # a collective's timeout in the weight group

    @property
    def device(self) -> str:
        return self.devices[self.rank - 1]


@dataclass(frozen=True)
class Weights:
    version: int
    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[str]  # one per name: tensors are sent as one flat buffer per dtype, in order


@dataclass(frozen=True)
class Version:
    version: int


@dataclass(frozen=True)
class Sample:
    step: int  # the training step the batch is for
    prompts: list[str]
    seeds: list[int]  # one per prompt
    k: int
    sampling: object  # SamplingConfig


@dataclass
class Sampled:
    step: int
    version: int  # the weights that sampled it: the trainer's after this step
    groups: list  # [prompt][k] Rollout
    seconds: float  # busy sampling this batch
    error: str | None = None  # the worker's traceback when sampling raised (the trainer raises it)
    worker: int = 1  # the worker's rank in the weight group: the shares of a batch join in this order


def weight_group(store_host: str, store_port: int, prefix: str, rank: int, size: int, timeout_s: float,
                 store=None):
    """The gloo group of the trainer (rank 0) and its workers, met through the trainer's TCPStore under
    `prefix`: its own group, apart from torchrun's default one, so the trainer ranks' collectives and the
    weight broadcasts never wait on each other."""
    store = store or dist.TCPStore(store_host, store_port, None, False, timedelta(seconds=timeout_s))
    return dist.ProcessGroupGloo(dist.PrefixStore(prefix, store), rank, size, timedelta(seconds=timeout_s))


def broadcast(group, tensor: torch.Tensor) -> None:
    """One tensor from rank 0 of `group` to every member, in place."""
    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    group.broadcast([tensor], opts).wait()


def flat_by_dtype(tensors: list[torch.Tensor]) -> dict[torch.dtype, torch.Tensor]:
    """The tensors as one flat CPU buffer per dtype, in order (a copy: the trainer's weights change
    while the broadcast is in flight)."""
    out: dict[torch.dtype, list] = {}
    for t in tensors:
        out.setdefault(t.dtype, []).append(t.detach().reshape(-1).cpu())
    return {d: torch.cat(ts) for d, ts in out.items()}


def receive_weights(group, model, msg: Weights) -> None:
    """The broadcast of `msg`'s tensors, copied into `model`'s parameters and buffers of those names."""
    named = dict(model.named_parameters())
    named.update(model.named_buffers())
    missing = [n for n in msg.names if n not in named]
    if missing:
        raise RuntimeError(f"the rollout worker's model has no {missing[:3]}: this architecture keeps its weights in "
                           f"another layout in memory than in its checkpoint; max_staleness does not serve it yet")
    by_dtype: dict[str, list[int]] = {}
    for i, d in enumerate(msg.dtypes):
        by_dtype.setdefault(d, []).append(i)
    with torch.no_grad():
        for d, idx in by_dtype.items():
            sizes = [int(torch.Size(msg.shapes[i]).numel()) for i in idx]
            flat = torch.empty(sum(sizes), dtype=getattr(torch, d))
            broadcast(group, flat)
            for i, part in zip(idx, flat.split(sizes)):
                p = named[msg.names[i]]
                p.copy_(part.view(msg.shapes[i]).to(p.dtype))


class Channel:
    """Messages between the trainer and one worker through the trainer's TCPStore (torch.distributed's
    key-value store, the one the weight group meets in): numbered keys under the group's prefix, each
    read once and deleted. `outbox` / `inbox`: "cmd" or "res" (the trainer sends commands, reads results)."""

    def __init__(self, store, prefix: str, rank: int, outbox: str, inbox: str):
        self.store, self.key = store, f"{prefix}-channel/{rank}"
        self.outbox, self.inbox, self.sent, self.read, self.beaten = outbox, inbox, 0, 0, 0.0

    def put(self, msg) -> None:
        self.store.set(f"{self.key}/{self.outbox}/{self.sent}", pickle.dumps(msg))
        self.sent += 1

    def poll(self):
        """The next message, or None when there is none yet."""
        key = f"{self.key}/{self.inbox}/{self.read}"
        if not self.store.check([key]):
            return None
        msg = pickle.loads(self.store.get(key))
        self.store.delete_key(key)
        self.read += 1
        return msg

    def beat(self) -> None:
        self.beaten = time.time()
        self.store.set(f"{self.key}/beat", repr(self.beaten))

    def last_beat(self) -> float:
        key = f"{self.key}/beat"
        return float(self.store.get(key)) if self.store.check([key]) else 0.0


def worker_main(spec: WorkerSpec, parent_pid: int) -> None:
    faulthandler.enable()
    # a Ctrl-C or a scheduler's SIGTERM is the trainer's to handle: it checkpoints with its batches in
    # flight, which needs its workers alive; a worker ends on "stop" or when the trainer is gone
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(spec.threads)
    from transformers.utils import logging as hf_logging

    from ..models import load_policy, load_tokenizer
    from .engine import EngineSetup
    from .factory import make_engine

    hf_logging.disable_progress_bar()
    store = dist.TCPStore(spec.store_host, spec.store_port, None, False, timedelta(seconds=spec.timeout_s))
    channel = Channel(store, spec.group, spec.rank, "res", "cmd")
    model = load_policy(spec.model_dir, spec.dtype, spec.device).eval().requires_grad_(False)
    tok = load_tokenizer(spec.model_dir)
    engine = make_engine(spec.engine, model, tok, EngineSetup(spec.model_dir, spec.options, spec.dtype, spec.seed,
                                                              log=lambda *a, **k: None, device=torch.device(spec.device)))
    group = weight_group(spec.store_host, spec.store_port, spec.group, spec.rank, spec.size, spec.timeout_s, store)
    version = None
    channel.beat()
    while True:
        try:
            cmd = channel.poll()
        except dist.DistNetworkError:  # the trainer's store is gone: the trainer was killed
            return
        if cmd is None:
            if os.getppid() != parent_pid:  # the trainer is gone (killed): so is its worker
                return
            if time.time() - channel.beaten > 1.0:  # idle is not hung: the trainer may train for long
                channel.beat()
            time.sleep(0.01)
            continue
        if cmd == "stop":
            return
        if isinstance(cmd, Weights):
            with beating(channel):  # a worker waiting in the broadcast for a slower one is not hung
                receive_weights(group, model, cmd)
            if engine.holds_weights:  # an engine with its own copy (vLLM) takes them from the model
                engine.update_weights(model.named_parameters())
            version = cmd.version
        elif isinstance(cmd, Version):
            version = cmd.version
        else:
            channel.put(sample(engine, cmd, version, spec, channel))
        channel.beat()


@contextmanager
def beating(channel: Channel, every_s: float = 1.0):
    """Beat from a thread for the block (a collective that waits on others)."""
    done = threading.Event()

    def beat():
        while not done.wait(every_s):
            channel.beat()
    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


def sample(engine, cmd: Sample, version: int, spec: WorkerSpec, channel: Channel) -> Sampled:
    """The batch of `cmd`, `spec.chunk` prompts a call, beating after each."""
    if spec.generation == 0:
        faults.inject("worker_sample", cmd.step)  # the worker dies mid-sample
        if os.environ.get("OREAL_FAULT") == f"worker_hang@{cmd.step}":
            time.sleep(10**6)  # the worker hangs mid-sample
    t0 = time.perf_counter()
    groups = []
    try:
        for s in range(0, len(cmd.prompts), spec.chunk):
            groups += engine.sample(cmd.prompts[s:s + spec.chunk], cmd.k, cmd.sampling,
                                    seed=cmd.seeds[s:s + spec.chunk])
            channel.beat()
    except Exception:  # a prompt too long, a broken engine: the trainer says it and stops
        return Sampled(cmd.step, version, [], time.perf_counter() - t0, traceback.format_exc(), spec.rank)
    return Sampled(cmd.step, version, groups, time.perf_counter() - t0, worker=spec.rank)


def launch(spec: WorkerSpec) -> subprocess.Popen:
    """A worker process for `spec` (its own interpreter: nothing of the trainer's is inherited but the
    environment, and no script is imported again as `spawn` would)."""
    blob = base64.b64encode(pickle.dumps(spec)).decode()
    # not a torchrun rank: it joins no default group, and reads nothing of rank 0's place in one
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV and not k.startswith("TORCHELASTIC_")}
    # its own session: a Ctrl-C at the terminal reaches the trainer, not its workers
    return subprocess.Popen([sys.executable, "-m", "oreal.rollout.worker", blob, str(os.getpid())], env=env,
                            start_new_session=True)


def as_record(s: Sampled) -> dict:
    """A `Sampled` as plain data, for a checkpoint."""
    assert s.error is None  # a failed batch is raised when it comes back, never kept
    return {"step": s.step, "version": s.version, "seconds": s.seconds,
            "groups": [[dataclasses.asdict(r) for r in g] for g in s.groups]}


def from_record(d: dict) -> Sampled:
    from .engine import Rollout

    return Sampled(d["step"], d["version"], [[Rollout(**r) for r in g] for g in d["groups"]], d["seconds"])


__all__ = ["Channel", "Sample", "Sampled", "Version", "Weights", "WorkerSpec", "as_record", "broadcast", "flat_by_dtype",
           "from_record", "launch", "receive_weights", "weight_group", "worker_main"]


if __name__ == "__main__":  # `launch`: python -m oreal.rollout.worker SPEC PARENT_PID
    from oreal.rollout import worker  # the module's own classes, not __main__'s copies: the commands are those

    worker.worker_main(pickle.loads(base64.b64decode(sys.argv[1])), int(sys.argv[2]))
