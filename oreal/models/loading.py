"""Loading and saving policies and token-level reward models as plain HF directories."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .. import distributed as dist_utils
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


def unwrapped(model):
    """A built model as transformers made it, from the state another trainer may have left it in:
    accelerate's mixed-precision wrapper (an autocast `forward` set on the instance, which TRL's
    trainers leave behind; accelerate keeps the forward it wrapped as `_original_forward`) is taken
    off, giving the class's own forward back. Any other `forward` set on the instance is a one-line
    ModelError. (accelerate's `extract_model_from_parallel` unwraps past transformers' own
    decorators of `forward`, so it is not used.)"""
    own = type(model).forward
    original = vars(model).get("_original_forward")
    if getattr(original, "__func__", None) is own and getattr(original, "__self__", None) is model:
        del model._original_forward
        vars(model).pop("forward", None)
    if getattr(vars(model).get("forward"), "__func__", None) is own:  # the class's forward bound on the instance
        del model.forward
    if "forward" in vars(model):
        raise ModelError(f"the {type(model).__name__} given has its forward replaced on the instance "
                         f"({getattr(model.forward, '__qualname__', model.forward)!r}), not by accelerate's "
                         "autocast wrapper: pass the model as transformers built it")
    return model


def checkpoint_activations(model) -> None:
    """Activation checkpointing that takes effect: transformers checkpoints a layer only in train
    mode (`self.gradient_checkpointing and self.training`), and a model from `from_pretrained` is in
    eval mode, where `gradient_checkpointing_enable()` alone changes nothing. The model goes to
    train mode with every dropout at 0, so its forward computes what it computed in eval mode
    (dropout with p = 0 returns its input and draws no random numbers)."""
    enable_checkpointing(model)
    train_without_dropout(model)


def enable_checkpointing(model) -> None:
    """transformers' switch under the name this version has: `activation_checkpointing_enable`
    since 5.2x, where `gradient_checkpointing_enable` prints a FutureWarning; 5.17 has only the old one."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def train_without_dropout(model) -> None:
    """Train mode with every dropout at 0: the forward of eval mode, with train-mode features on."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for name in ("attention_dropout", "dropout", "attn_dropout", "hidden_dropout"):
            if isinstance(getattr(m, name, None), float):
                setattr(m, name, 0.0)


def load_tokenizer(name_or_path: str):
    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tok.pad_token is None:  # many causal LMs ship without one
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def attention_kwargs(attn: str | None) -> dict:
    """from_pretrained's attention implementation: transformers' own choice for None or "auto"."""
    return {} if attn in (None, "auto") else {"attn_implementation": attn}


def set_attention(model, attn: str | None) -> None:
    """Give a built model this attention implementation (None or auto: leave it); the reference and
    the credit model attend as the policy does, where a reload would take transformers' default."""
    if attn not in (None, "auto") and getattr(model.config, "_attn_implementation", None) != attn:
        model.set_attn_implementation(attn)


def from_dir(auto_class, path: str, dtype: str, device="cpu", **kw):
    """`auto_class.from_pretrained(path)` on `device`. On the meta device ("meta": FSDP2's ranks
    other than 0, `oreal.distributed.load_device`) the same model without reading a weight: built
    from its config as from_pretrained builds it (dtype, attention, eval mode, the directory's
    generation config), its shards filled from rank 0's by `shard_from_rank0`."""
    if str(device) != "meta":
        return auto_class.from_pretrained(path, dtype=torch_dtype(dtype), **kw).to(device)
    from transformers import AutoConfig, GenerationConfig

    with torch.device("meta"):
        model = auto_class.from_config(AutoConfig.from_pretrained(path), dtype=torch_dtype(dtype), **kw)
    if model.can_generate():
        try:
            model.generation_config = GenerationConfig.from_pretrained(path)
        except OSError:  # none saved: the one from_config made from the model's config, as from_pretrained keeps
            pass
    return model.eval()


def load_policy(name_or_path: str, dtype: str = "float32", device: str = "cpu", attn: str | None = None):
    return from_dir(AutoModelForCausalLM, resolve_model_path(name_or_path), dtype, device, **attention_kwargs(attn))


def load_backbone(name_or_path: str, dtype: str = "float32", device: str = "cpu"):
    """A causal LM's backbone (its base model: no LM head) from a policy directory, or from a
    directory holding a backbone (`AutoModel`, which drops the LM head and reads either)."""
    import logging

    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # "weights not used: lm_head" is expected here
    try:
        return from_dir(AutoModel, resolve_model_path(name_or_path), dtype, device)
    finally:
        hf_logging.set_verbosity(level)


def decoder_layers(model, required: bool = False) -> list:
    """The decoder layers of an HF model, the units FSDP2 shards one by one: the outermost modules
    of the classes the model's `_no_split_modules` names (transformers' own list of the blocks
    never to split: `LlamaDecoderLayer`, `GPTNeoXLayer`, ...), wherever the model keeps them."""
    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    found = []

    def walk(module):
        for child in module.children():
            if any(c.__name__ in names for c in type(child).__mro__):  # FSDP2 subclasses the layers
                found.append(child)
            else:
                walk(child)
    walk(model)
    if required and not found:  # FSDP2 would wrap the whole model as one unit: no memory saved
        raise ModelError(f"fsdp=true: no decoder layers found in {type(model).__name__} (its _no_split_modules "
                         f"name {sorted(names) or 'nothing'}); use fsdp=false, or a model whose layers transformers names")
    return found


def shard_lm(model, bf16: bool = False, cpu_offload: bool = False):
    """FSDP2 on a causal LM: each decoder layer, then the root (`oreal.distributed.fsdp_wrap`),
    every rank's shards holding rank 0's weights where the others built it on the meta device
    (`oreal.distributed.shard_from_rank0`)."""
    return dist_utils.shard_from_rank0(
        model, lambda: dist_utils.fsdp_wrap(model, decoder_layers(model, required=True), bf16, cpu_offload))


def save_model(model, tokenizer, path: str | Path, state_dict: dict | None = None) -> None:
    """A standard HF directory; `state_dict` overrides the model's own (FSDP2 gathers it first)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def read_safetensors(path: str | Path) -> dict:
    """Every tensor of an HF directory's safetensors files (one file or shards), on CPU, under
    the files' own names (`read_weights` gives the names a model has in memory)."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {path}")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def read_weights(path: str | Path, base: bool = False) -> dict:
    """An HF directory's weights under the names the model has in memory, on CPU, as saved:
    transformers loads the directory (`AutoModelForCausalLM`, or `AutoModel` for a backbone) and
    renames what a checkpoint format names otherwise (GPT-NeoX saves its LM head as `embed_out`,
    which is `lm_head` in memory); the raw files' keys would not fit."""
    import logging

    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # a backbone read from a policy's directory drops its LM head
    try:
        model = (AutoModel if base else AutoModelForCausalLM).from_pretrained(str(path), dtype="auto")
    finally:
        hf_logging.set_verbosity(level)
    return model.state_dict()


def load_weights(model, path: str | Path, state: dict | None = None, base: bool = False) -> None:
    """Load an HF directory's weights (or `state`, read by `read_weights`) into `model` in place,
    exactly; `base`: the model is a backbone. Only tied weights may be absent."""
    state = read_weights(path, base) if state is None else state
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or any(k not in tied and "lm_head" not in k for k in missing):
        raise ValueError(f"{path}: weights do not fit the model (missing {missing}, unexpected {unexpected})")
    if missing and hasattr(model, "tie_weights"):
        model.tie_weights()
