"""The trainer's side of an engine that holds its own copy of the weights: the policy's full
weights under the names and in the layout a plain Hugging Face checkpoint uses, FSDP2 shards
gathered one unit (a decoder layer, the root) at a time and LoRA merged into the base weights for
the push. Engines only receive `(name, tensor)` pairs (`RolloutEngine.update_weights`)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager

import torch
from torch import nn

from .. import distributed as dist_utils


def plain_name(name: str) -> str:
    """A parameter's name in a plain HF checkpoint (a PEFT model's base names)."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def plain_names(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name in a plain HF checkpoint, parameter) of every weight to push: a PEFT model's base
    names, its LoRA matrices left out (merged into the base weights first)."""
    return [(plain_name(name), p) for name, p in model.named_parameters() if "lora_" not in name]


def unmergeable_lora(model: nn.Module) -> list[str]:
    """The LoRA-wrapped modules PEFT cannot merge into a plain weight (any that is not Linear)."""
    bad = []
    for name, m in model.named_modules():
        base = getattr(m, "base_layer", None)
        if base is not None and hasattr(m, "lora_A") and not isinstance(base, nn.Linear):
            bad.append(f"{name} ({type(base).__name__})")
    return bad


def lora_deltas(model: nn.Module) -> dict[str, nn.Module]:
    """{plain name of a LoRA-wrapped Linear's weight: the LoRA module}: each merged out of place."""
    out = {}
    for name, m in model.named_modules():
        if hasattr(m, "lora_A") and isinstance(getattr(m, "base_layer", None), nn.Linear):
            out[f"{name}.base_layer.weight".removeprefix("base_model.model.").replace(".base_layer.", ".")] = m
    return out


def merged_weight(weight: torch.Tensor, lora: nn.Module) -> torch.Tensor:
    """base weight + each active adapter's delta, computed in float32 into a new tensor of the
    weight's dtype: the base itself is never written (an in-place merge and unmerge in bf16 rounds
    it a little every step, and the base is also the reference policy)."""
    if getattr(lora, "disable_adapters", False):
        return weight
    total = weight.float()
    for name in lora.active_adapters:
        if name in lora.lora_A:
            total = total + lora.get_delta_weight(name).float()
    return total.to(weight.dtype)


@contextmanager
def full_weights(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[Iterator[tuple[str, torch.Tensor]]]:
    """A generator of (name, full detached tensor) for the block: a LoRA policy's adapters merged
    into new tensors (the model is not changed). Under FSDP2 each unit is all-gathered whole at its
    first parameter and resharded after its last (`unit_tensors`): every rank must read them all,
    in the same order (each gather is a collective). `dtype`: the dtype the receiver keeps them in
    (None: the model's own); a unit whose mixed precision gathers in a lower one is read
    parameter by parameter, exactly (`full_tensor`)."""
    deltas = lora_deltas(model)
    to_checkpoint = checkpoint_layout(model)
    units = {n: u for n, u in dist_utils.fsdp_units(model).items() if lossless(u, dtype)}

    def tensors():
        with torch.no_grad(), closing(unit_tensors(model, units)) as params:
            for name, p in params:
                t = (p.full_tensor() if hasattr(p, "full_tensor") else p).detach()
                name = plain_name(name)
                yield from to_checkpoint(name, merged_weight(t, deltas[name]) if name in deltas else t)
    named = tensors()
    try:
        yield named
    finally:
        named.close()  # a unit left gathered by a reader that stopped early is resharded


def lossless(unit: nn.Module, dtype: torch.dtype | None) -> bool:
    """Whether FSDP2's unshard of `unit` gives what the receiver keeps: the parameters' own dtype,
    or mixed precision's param_dtype where the receiver keeps that dtype anyway (its cast of each
    shard rounds each value as the receiver's cast of the full tensor would)."""
    gathers = dist_utils.unshard_dtype(unit)
    return gathers is None or gathers == dtype or all(p.dtype == gathers for p in unit.parameters())


def unit_tensors(model: nn.Module, units: dict[str, nn.Module]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, parameter) of every weight but the LoRA matrices, in `named_parameters` order, those
    of the FSDP2 units in `units` ({name: unit}) unsharded: one all-gather per unit (in its mixed
    precision's param_dtype), the root held from the embeddings to the output layer and one layer
    at a time beside it. Each comes as a copy: resharding frees the gathered storage."""
    names = [n for n, _ in model.named_parameters() if "lora_" not in n]
    last = {units[n]: i for i, n in enumerate(names) if n in units}
    held = []
    try:
        for i, name in enumerate(names):
            unit = units.get(name)
            if unit is not None and unit not in held:
                unit.reshard()  # what a forward left gathered predates the optimiser step
                unit.unshard()
                held.append(unit)
            p = model.get_parameter(name)
            yield name, p.detach().clone() if unit is not None else p
            if unit is not None and last[unit] == i:
                unit.reshard()
                held.remove(unit)
    finally:
        for unit in held:
            unit.reshard()


def checkpoint_layout(model: nn.Module):
    """`(name, tensor) -> [(name, tensor), ...]` in the layout the model's checkpoint files use,
    which an engine loading checkpoints expects: transformers keeps some weights in memory in
    another layout than on disk (a mixture of experts' experts fused into [E, ...] tensors, one
    per layer; GPT-NeoX's `embed_out` as `lm_head`) and converts back when it saves
    (`revert_weight_conversion`, here one tensor at a time). Identity where transformers has no
    such conversion; the engine's log-prob check after every push catches a layout it missed."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return lambda name, t: [(name, t)]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: the HF model
    return lambda name, t: list(revert_weight_conversion(base, {name: t}).items())
