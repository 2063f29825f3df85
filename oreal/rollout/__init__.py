"""Rollout engines behind one interface (`sample(prompts, k, cfg, seed)`), and the choice of
engine per device (`engine=auto`)."""
from .engine import (CacheMismatchError, HFGenerateEngine, HFSampler, Rollout, RolloutEngine, SamplingConfig,
                     filter_logits)
from .on_device import OnDeviceSampler

ENGINES = {"hf_sampler": HFSampler, "hf_device": OnDeviceSampler, "hf_generate": HFGenerateEngine}
AUTO = "auto"  # hf_sampler on CPU (fastest there), hf_device on an accelerator (no host sync per token)


def resolve_engine(name: str, device) -> str:
    if name == AUTO:
        return "hf_sampler" if str(device).startswith("cpu") else "hf_device"
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; choose from {sorted(ENGINES) + [AUTO]}")
    return name


def make_engine(name: str, model, tokenizer) -> RolloutEngine:
    return ENGINES[resolve_engine(name, next(model.parameters()).device)](model, tokenizer)


__all__ = ["AUTO", "CacheMismatchError", "ENGINES", "HFGenerateEngine", "HFSampler", "OnDeviceSampler", "Rollout",
           "RolloutEngine", "SamplingConfig", "filter_logits", "make_engine", "resolve_engine"]
