"""LoRA adapters through PEFT: the trained policy is the base plus an adapter, and the reference
policy is the same base with the adapter switched off (no second copy in memory)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..errors import ConfigError


ALL_LINEAR = "all-linear"  # PEFT's name for every linear layer but the output layer, in any architecture


def add_lora(model, r: int, alpha: int, dropout: float, target_modules: list[str]):
    """A PEFT LoRA model; `target_modules` ["all-linear"] (the default) adapts the attention and
    MLP projections whatever the architecture names them (`q_proj`, `qkv_proj`,
    `query_key_value`, ...). A list that matches no module is a one-line ConfigError."""
    from peft import LoraConfig, get_peft_model

    targets = ALL_LINEAR if list(target_modules) == [ALL_LINEAR] else list(target_modules)
    try:
        with warnings.catch_warnings():  # PEFT asks transformers 5.2x under its deprecated name
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                                    target_modules=targets, task_type="CAUSAL_LM"))
    except ValueError as e:
        if "not found in the base model" not in str(e):
            raise
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"lora.target_modules {list(target_modules)} match no module of {type(model).__name__} "
                          f"(its linear layers: {', '.join(linear)}); use lora.target_modules=[{ALL_LINEAR}]") from None


def load_lora_adapter(model, path: str | Path) -> None:
    """Load the adapter weights saved by `save_pretrained` in `path` into a PEFT model in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(path) / "adapter_model.safetensors")))
