"""torch.distributed glue for `torchrun`: process group setup, the collectives the trainer needs,
and FSDP2 sharding. One process (no torchrun) runs with world size 1 and none of this engages.

Data parallelism in the trainer: every rank draws the same B questions, samples and grades its
contiguous share, then all-gathers the rewards, so filtering, pair selection, advantages and the
global token counts are computed over the whole batch exactly as one process would. Gradients are
summed across ranks (all-reduce for replicated models, reduce-scatter under FSDP2).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup(device: str = "cpu", force: bool = False) -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun with more than
    one process, or when `force` (FSDP2 on a single GPU still needs a process group)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not force:
        return 0, 1
    if force:
        for k, v in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29511"), ("RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(k, v)
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def local_device(device: str) -> str:
    """This process's device: under torchrun each rank takes the GPU of its LOCAL_RANK, whatever
    index the config names; CPU stays CPU."""
    if device.startswith("cuda") and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def comm_device() -> torch.device:
    """Where collective buffers must live: NCCL moves only CUDA tensors, gloo CPU ones."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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


def sum_floats(values: list[float]) -> list[float]:
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return t.tolist()


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
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def barrier() -> None:
    if active():
        dist.barrier()


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


def is_fsdp(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


class gathered:
    """Hold an FSDP2 model's full parameters across many small forwards (token-by-token rollouts,
    evaluation): one all-gather per module up front instead of one per forward, and no collective
    inside the forwards, so ranks may run different numbers of them. A no-op without FSDP."""

    def __init__(self, *models):
        from torch.distributed.fsdp import FSDPModule

        self.mods = [m for model in models if model is not None for m in model.modules()
                     if isinstance(m, FSDPModule)]

    def __enter__(self):
        for m in self.mods:
            m.set_reshard_after_forward(False)
            m.unshard()
        return self

    def __exit__(self, *exc):
        for m in self.mods:
            m.reshard()
            m.set_reshard_after_forward(True)


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
