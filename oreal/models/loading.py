"""Loading and saving policies and token-level reward models as plain HF directories."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from ..errors import ModelError

DEFAULT_MODEL = "default"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def default_model_dir() -> Path:
    """The embedded tiny policy shipped inside the package, wherever it is installed."""
    return Path(str(resources.files("oreal") / "assets" / "default_model"))


def resolve_model_path(name_or_path: str) -> str:
    if name_or_path == DEFAULT_MODEL:
        d = default_model_dir()
        if not (d / "config.json").exists():
            raise ModelError(f"the embedded default model is missing from {d}")
        return str(d)
    p = Path(name_or_path)
    if not p.exists():
        raise ModelError(f"model directory {name_or_path} not found (models load from local "
                         "directories; 'default' names the embedded model)")
    if not (p / "config.json").is_file():
        raise ModelError(f"{name_or_path} is not a Hugging Face model directory (no config.json)")
    return str(p)


def torch_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from {sorted(_DTYPES)}")
    return _DTYPES[name]


def forward_kwargs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   position_ids: torch.Tensor | None = None) -> dict:
    """A training forward's keyword arguments: padded rows (an attention mask) or rows packed into
    one sequence (position ids restarting at each row, no mask). No KV cache: with one,
    transformers does not read restarting position ids as separate rows."""
    kw = {"input_ids": input_ids, "use_cache": False}
    if position_ids is not None:
        kw["position_ids"] = position_ids
    else:
        kw["attention_mask"] = attention_mask
    return kw


def load_tokenizer(name_or_path: str):
    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tok.pad_token is None:  # many causal LMs ship without one
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_policy(name_or_path: str, dtype: str = "float32", device: str = "cpu"):
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name_or_path),
                                                 dtype=torch_dtype(dtype))
    return model.to(device)


def load_token_head(name_or_path: str, dtype: str = "float32", device: str = "cpu"):
    """The token-level reward model: the policy's backbone with a one-logit-per-token head.

    From a policy directory the backbone is copied and only the head (`score`) is new; from a
    saved token-RM directory everything loads as saved.
    """
    import logging

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # "newly initialised score head" is expected here
    try:
        model = AutoModelForTokenClassification.from_pretrained(
            resolve_model_path(name_or_path), num_labels=1, dtype=torch_dtype(dtype))
    finally:
        hf_logging.set_verbosity(level)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model.to(device)


def decoder_layers(model) -> list:
    """The decoder layers of an HF model (`model.model.layers`), the units FSDP2 shards one by one."""
    return list(getattr(getattr(model, "model", model), "layers", None) or [])


def save_model(model, tokenizer, path: str | Path, state_dict: dict | None = None) -> None:
    """A standard HF directory; `state_dict` overrides the model's own (FSDP2 gathers it first)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def read_safetensors(path: str | Path) -> dict:
    """Every tensor of an HF directory's safetensors files (one file or shards), on CPU."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {path}")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_weights(model, path: str | Path) -> None:
    """Load the safetensors weights of an HF directory into `model` in place, exactly. Only tied
    weights may be absent from the files."""
    state = read_safetensors(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or any(k not in tied and "lm_head" not in k for k in missing):
        raise ValueError(f"{path}: weights do not fit the model (missing {missing}, unexpected {unexpected})")
    if missing and hasattr(model, "tie_weights"):
        model.tie_weights()
