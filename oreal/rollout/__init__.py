"""Rollout engines behind one interface (`sample(prompts, k, cfg, seed)`, `sync_weights(model)`,
`close()`), and the choice of engine per device (`engine=auto`)."""
from .engine import (CacheMismatchError, HFEngine, HFGenerateEngine, HFSampler, Rollout, RolloutEngine,
                     SamplingConfig, eval_mode, filter_logits)
from .on_device import OnDeviceSampler

ENGINES = {"hf_sampler": HFSampler, "hf_device": OnDeviceSampler, "hf_generate": HFGenerateEngine}
AUTO = "auto"  # hf_sampler on CPU (fastest there), hf_device on an accelerator (no host sync per token)


def resolve_engine(name: str, device) -> str:
    if name == AUTO:
        return "hf_sampler" if str(device).startswith("cpu") else "hf_device"
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; choose from {sorted(ENGINES) + [AUTO]}")
    return name


def make_engine(name: str, model, tokenizer, model_dir: str | None = None) -> RolloutEngine:
    """The engine `name` over `model`. `model_dir`: the policy's directory, for engines that load
    their own copy of the weights (the HF engines sample from `model` itself)."""
    return ENGINES[resolve_engine(name, next(model.parameters()).device)](model, tokenizer)


__all__ = ["AUTO", "CacheMismatchError", "ENGINES", "HFEngine", "HFGenerateEngine", "eval_mode", "HFSampler", "OnDeviceSampler", "Rollout",
           "RolloutEngine", "SamplingConfig", "filter_logits", "make_engine", "resolve_engine"]
