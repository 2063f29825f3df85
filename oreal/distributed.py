"""torch.distributed glue for `torchrun`: process group setup, the collectives the trainer needs,
and FSDP2 sharding. One process (no torchrun) runs with world size 1 and none of this engages.

Data parallelism in the trainer: every rank draws the same B questions, samples and grades its
contiguous share, then all-gathers the rewards, so filtering, pair selection, advantages and the
global token counts are computed over the whole batch exactly as one process would. Gradients are
summed across ranks (all-reduce for replicated models, reduce-scatter under FSDP2).
"""
from __future__ import annotations

import itertools
import os
import sys
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist


def setup(device: str = "cpu", force: bool = False, timeout_s: float = 3600.0) -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun with more than
    one process, or when `force` (FSDP2 on a single GPU still needs a process group: it gets a
    free port, so two such jobs on one node do not collide). `timeout_s`: how long a rank waits
    in a collective for the others (NCCL's default 10 minutes is shorter than what rank 0 does
    alone while the others wait: evaluation, hashing a checkpoint's shards)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not force:
        return 0, 1
    if force and "MASTER_PORT" not in os.environ:
        os.environ.update(MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"), MASTER_PORT=str(free_port()))
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(k, v)
    if not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(local_device(device)))
        dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_for(device: str) -> str:
    """The process group's backend: on CUDA, NCCL for CUDA tensors and gloo beside it for CPU ones
    (`cpu_offload` keeps shards, and so the gradient norm's all-reduce and the weight push's
    `full_tensor()`, on the CPU, which NCCL alone cannot move); gloo on CPU."""
    return "cuda:nccl,cpu:gloo" if device.startswith("cuda") else "gloo"


def local_device(device: str) -> str:
    """This process's device: under torchrun each rank takes the GPU of its LOCAL_RANK, whatever
    index the config names; one process keeps the index it names (`cuda` is `cuda:0`); CPU stays
    CPU."""
    if device.startswith("cuda") and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return "cuda:0" if device == "cuda" else device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def comm_device() -> torch.device:
    """Where collective buffers must live: NCCL moves only CUDA tensors, gloo CPU ones."""
    if active() and "nccl" in dist.get_backend():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous [lo, hi) share of n items that `rank` handles."""
    return rank * n // world, (rank + 1) * n // world


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows in rank order (rows may differ in number between ranks)."""
    if not active():
        return t
    sizes = [None] * dist.get_world_size()
    dist.all_gather_object(sizes, t.size(0))
    pad = torch.zeros((max(sizes),) + tuple(t.shape[1:]), dtype=t.dtype, device=comm_device())
    pad[: t.size(0)] = t
    out = [torch.zeros_like(pad) for _ in sizes]
    dist.all_gather(out, pad)
    return torch.cat([o[:n] for o, n in zip(out, sizes)]).to(t.device)


def all_gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order, on every rank (object collectives go over gloo
    on CPU, also beside NCCL)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_list(items: list) -> list:
    """Every rank's list (picklable items), concatenated in rank order."""
    return [x for part in all_gather_objects(items) for x in part]


def sum_floats(values: list[float]) -> list[float]:
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return t.tolist()


def sum_tensor(t: torch.Tensor) -> list[float]:
    """A device tensor of per-step sums, summed over ranks and read to the host: the step's one
    synchronisation for them (the hot loops add to it on the device, no `.item()` per term)."""
    if active():
        c = t.to(comm_device(), torch.float64)
        dist.all_reduce(c)
        t = c
    return t.tolist()


def from_rank0(fn):
    """`fn()` run on rank 0 alone, its result (or the one-line error it raised) on every rank: the
    others wait in one broadcast instead of repeating the work (hashing every file of a checkpoint)."""
    if not active():
        return fn()
    box = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # every rank raises it, so none waits in a later collective
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def any_flag(flag: bool) -> bool:
    """True on every rank when it is true on any (stop requests, time limits)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_grads(model: torch.nn.Module) -> None:
    """Sum the gradients of a replicated model across ranks (a missing gradient counts as 0)."""
    if not active():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    by_dtype: dict[torch.dtype, list] = {}  # one flat buffer per dtype: a bf16 LM beside fp32 calibration
    for p in params:
        by_dtype.setdefault(p.dtype, []).append(p)
    for group in by_dtype.values():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in group]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(group, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n


def barrier() -> None:
    if active():
        dist.barrier()


def end_job(code: int) -> NoReturn:
    """The last call of a rank's process under torchrun (the CLI's, after everything is written and
    closed): wait for every rank, flush, and leave with `code` without the interpreter's shutdown.
    That shutdown, destroying torch's C++ threads, aborted a finished rank now and then ("terminate
    called without an active exception": 2 of about 60 two-rank CPU runs on 2026-12-07, with and
    without `destroy_process_group` first), so that torchrun failed a job whose run was complete."""
    if active():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def fsdp_wrap(model: torch.nn.Module, layers: list, bf16: bool = False, cpu_offload: bool = False) -> torch.nn.Module:
    """FSDP2: shard each of `layers` (the decoder layers), then the root; gradients are summed, not
    averaged, because the trainer's losses are already divided by global token counts."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kw = {}
    if bf16:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:
        kw["offload_policy"] = CPUOffloadPolicy()
    for layer in layers:
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():  # every FSDP2 unit, not just the root
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    return model


def load_device(fsdp: bool, device):
    """Where a model is built before the trainer places it: `device` without FSDP2; under FSDP2
    host memory on rank 0 and, with more than one rank, the meta device on the others (tensors
    with a shape and no storage), whose shards `shard_from_rank0` fills with rank 0's weights: a
    node of 8 ranks reads a 7B's 30 GB of float32 weights into host memory once, not 8 times."""
    if not fsdp:
        return device
    return "meta" if active() and dist.get_rank() != 0 else "cpu"


def shard_from_rank0(model: torch.nn.Module, shard) -> torch.nn.Module:
    """`shard()` (FSDP2's `fully_shard` of `model`, as `fsdp_wrap`), every rank's shards holding
    rank 0's weights where the other ranks built `model` on the meta device (`load_device`), as
    torchtune and TRL load under FSDP2: rank 0 keeps its full state dict across the sharding, the
    others give their meta shards storage where rank 0's lie (the device, or host memory under
    cpu_offload), and `set_model_state_dict` broadcasts it tensor by tensor into every rank's
    shards. The buffers outside the state dict (rotary `inv_freq`) come from rank 0 too, as do
    the dtypes (a model's fp32 modules), and so does the global RNG state: a rank that loaded
    its own copy drew what rank 0 drew (a new head's init), and the meta device draws nothing.
    A collective. Every rank holding weights (a built model given to each): `shard()` alone."""
    if not active():
        return shard() or model
    rank0 = dist.get_rank() == 0
    on_meta = any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))
    if rank0 and on_meta:
        raise AssertionError("shard_from_rank0: rank 0 holds no weights to send (its model is on the meta device)")
    if not any_flag(on_meta):
        return shard() or model
    full = model.state_dict() if rank0 else {}  # rank 0's tensors, kept alive across the sharding
    dtypes = from_rank0(lambda: {k: v.dtype for k, v in full.items()})
    if not rank0:
        for k, t in _named_tensors(model):
            if k in dtypes and t.dtype != dtypes[k]:
                t.data = t.data.to(dtypes[k])  # in place: a tied weight stays tied
    shard()
    places = from_rank0(lambda: _places(model))
    if not rank0:
        _materialise(model, places)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    for name, buf in model.named_buffers():
        if name in places["outside"]:
            dist.broadcast(buf, src=0)
    torch.set_rng_state(from_rank0(torch.get_rng_state))
    return model


def _named_tensors(model):
    """(state-dict name, tensor) of every parameter and buffer, a shared one under each of its names."""
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for k, t in itertools.chain(mod._parameters.items(), mod._buffers.items()):
            if t is not None:
                yield (f"{mod_name}.{k}" if mod_name else k), t


def _places(model) -> dict:
    """Where rank 0's sharded parameters and its buffers lie (device types), with each buffer's
    shape and dtype, and the buffers outside the state dict (non-persistent ones)."""
    params = {(p.to_local() if hasattr(p, "to_local") else p).device.type for p in model.parameters()}
    if len(params) != 1:
        raise AssertionError(f"shard_from_rank0: parameters on {sorted(params)}; one device expected")
    buffers, outside = {}, set()
    for mod_name, mod in model.named_modules():
        for k, b in mod._buffers.items():
            if b is not None:
                name = f"{mod_name}.{k}" if mod_name else k
                buffers[name] = (tuple(b.shape), b.dtype, b.device.type)
                if k in mod._non_persistent_buffers_set:
                    outside.add(name)
    return {"params": params.pop(), "buffers": buffers, "outside": outside}


def _device(kind: str) -> torch.device:
    """This rank's device of a kind rank 0 named (each rank has its own GPU)."""
    if kind == "cpu" or kind == "meta":
        return torch.device(kind)
    return torch.device(kind, torch.accelerator.current_device_index())


def _materialise(model, places: dict) -> None:
    """Storage (uninitialised) for a meta-built model's shards and buffers where rank 0's lie;
    `to_empty` lets FSDP2 re-register its sharded parameters."""
    model.to_empty(device=_device(places["params"]))
    for mod_name, mod in model.named_modules():
        for k, b in list(mod._buffers.items()):
            name = f"{mod_name}.{k}" if mod_name else k
            if b is not None and name in places["buffers"]:
                shape, dtype, kind = places["buffers"][name]
                mod._buffers[k] = torch.empty(shape, dtype=dtype, device=_device(kind))


def is_fsdp(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def reshard_root(model) -> None:
    """Free an FSDP2 root's own parameters (embeddings, output layer) after forwards without
    gradients: FSDP2 keeps a root's gathered after its forward, for the backward that needs them
    at once, and with no backward nothing frees them (a credit model's, 2.2 GB at 7B, would stay
    through the policy update). A no-op without FSDP2."""
    if is_fsdp(model):
        model.reshard()


def fsdp_units(model) -> dict[str, torch.nn.Module]:
    """{parameter name: the FSDP2 module that shards it}: the innermost `fully_shard`ed module
    above it (a decoder layer, else the root). Empty without FSDP2."""
    from torch.distributed.fsdp import FSDPModule

    units = {name: m for name, m in model.named_modules() if isinstance(m, FSDPModule)}
    out = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        modules = [".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]  # innermost first, the root ("") last
        owner = next((units[m] for m in modules if m in units), None)
        if owner is not None:
            out[name] = owner
    return out


def unshard_dtype(unit) -> torch.dtype | None:
    """The dtype FSDP2's `unshard()` gathers a unit's parameters in: its MixedPrecisionPolicy's
    param_dtype, None for their own (FSDP2 has no public getter for a unit's policy)."""
    return unit._get_fsdp_state()._mp_policy.param_dtype


class gathered:
    """Hold an FSDP2 model's full parameters across many small forwards (token-by-token rollouts,
    evaluation): one all-gather per module up front instead of one per forward, and no collective
    inside the forwards, so ranks may run different numbers of them. A no-op without FSDP."""

    def __init__(self, *models):
        from torch.distributed.fsdp import FSDPModule

        self.mods = [m for model in models if model is not None for m in model.modules()
                     if isinstance(m, FSDPModule)]
        self.roots = {id(model) for model in models if model is not None}

    def __enter__(self):
        for m in self.mods:
            m.set_reshard_after_forward(False)
            m.unshard()
        return self

    def __exit__(self, *exc):
        for m in self.mods:
            m.reshard()
            # FSDP2's own choice back: the layers reshard after forward, the root does not (its
            # embeddings and output layer are needed again at once in backward)
            m.set_reshard_after_forward(id(m) not in self.roots, recurse=False)


def full_state_dict(model) -> dict:
    """The unsharded state dict on CPU (a collective under FSDP2: call it on every rank)."""
    if not is_fsdp(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # own copies: on a CPU device "offload" need not copy, and these outlive the next gather
    return {k: v.detach().clone() for k, v in sd.items()}


def load_full_state_dict(model, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def load_optimizer_state(model, opt, state: dict | None) -> None:
    if state is None:
        return
    if not is_fsdp(model):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def _all_max(x, dtype: torch.dtype):
    if not active():
        return x
    t = torch.tensor([x], dtype=dtype, device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def max_float(x: float) -> float:
    return float(_all_max(x, torch.float64))


def max_int(n: int) -> int:
    return int(_all_max(n, torch.long))


def save_sharded(path, models: dict, optimizers: dict) -> None:
    """torch.distributed.checkpoint (DCP): every rank writes its own shards of each model's
    weights and of its optimiser's state into `path`, so no process ever holds the full state.
    `optimizers` maps a model's name to its optimiser, or leaves it out (not stepped yet: asking
    for its state would initialise it with a zero-lr step). A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {name: get_model_state_dict(m) for name, m in models.items()}
    for name, opt in optimizers.items():
        state[f"{name}.optim"] = get_optimizer_state_dict(models[name], opt)
    dcp.save(state, checkpoint_id=str(path))


def load_sharded(path, models: dict, optimizers: dict) -> None:
    """Load what `save_sharded` wrote into models (and the named optimisers) sharded for this
    run's world size, whatever the world size that wrote it: DCP reshards on load."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    state = {name: get_model_state_dict(m) for name, m in models.items()}
    for name, opt in optimizers.items():  # initialises the state's shape; the values are replaced
        state[f"{name}.optim"] = get_optimizer_state_dict(models[name], opt)
    dcp.load(state, checkpoint_id=str(path))
    for name, m in models.items():
        set_model_state_dict(m, state[name])
    for name, opt in optimizers.items():
        set_optimizer_state_dict(models[name], opt, state[f"{name}.optim"])
