"""LoRA adapters through PEFT: the trained policy is the base plus an adapter, and the reference
policy is the same base with the adapter switched off (no second copy in memory)."""
from __future__ import annotations

from pathlib import Path


def add_lora(model, r: int, alpha: int, dropout: float, target_modules: list[str]):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=list(target_modules), task_type="CAUSAL_LM"))


def load_lora_adapter(model, path: str | Path) -> None:
    """Load the adapter weights saved by `save_pretrained` in `path` into a PEFT model in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(path) / "adapter_model.safetensors")))
