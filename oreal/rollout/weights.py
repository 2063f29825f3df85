"""The trainer's side of an engine that holds its own copy of the weights: the policy's full
weights under the names and in the layout a plain Hugging Face checkpoint uses, FSDP2 shards
gathered one tensor at a time and LoRA merged into the base weights for the push. Engines only receive
`(name, tensor)` pairs (`RolloutEngine.update_weights`)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def plain_names(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name in a plain HF checkpoint, parameter) of every weight to push: a PEFT model's base
    names, its LoRA matrices left out (merged into the base weights first)."""
    out = []
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        out.append((name.removeprefix("base_model.model.").replace(".base_layer.", "."), p))
    return out


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
def full_weights(model: nn.Module) -> Iterator[Iterator[tuple[str, torch.Tensor]]]:
    """A generator of (name, full detached tensor) for the block: a LoRA policy's adapters merged
    into new tensors (the model is not changed), each FSDP2 parameter gathered when it is read
    (every rank must read them all, in the same order: `full_tensor` is a collective)."""
    deltas = lora_deltas(model)
    to_checkpoint = checkpoint_layout(model)

    def tensors():
        with torch.no_grad():
            for name, p in plain_names(model):
                t = (p.full_tensor() if hasattr(p, "full_tensor") else p).detach()
                yield from to_checkpoint(name, merged_weight(t, deltas[name]) if name in deltas else t)
    yield tensors()


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
