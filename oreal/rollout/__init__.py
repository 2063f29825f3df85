"""Rollout engines behind one interface (`sample(prompts, k, cfg, seed)`, `sync_weights(model)`,
`close()`), and the choice of engine per device (`engine=auto`)."""
from .engine import (CacheMismatchError, HFEngine, HFGenerateEngine, HFSampler, Rollout, RolloutEngine,
                     SamplingConfig, eval_mode)
from .sampling import filter_logits
from .on_device import OnDeviceSampler

VLLM = "vllm"  # imported on first use: vLLM is optional (oreal.rollout.vllm_engine)
ENGINES = {"hf_sampler": HFSampler, "hf_device": OnDeviceSampler, "hf_generate": HFGenerateEngine, VLLM: None}
AUTO = "auto"  # hf_sampler on CPU (fastest there), hf_device on an accelerator (no host sync per token)


def resolve_engine(name: str, device) -> str:
    if name == AUTO:
        return "hf_sampler" if str(device).startswith("cpu") else "hf_device"
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; choose from {sorted(ENGINES) + [AUTO]}")
    return name


def make_engine(name: str, model, tokenizer, model_dir: str | None = None, **options) -> RolloutEngine:
    """The engine `name` over `model`. `model_dir` and `options` (VLLMEngine's: `options`, `dtype`,
    `seed`, `compute_dtype`, `log`) are for engines that hold their own copy of the weights; the HF
    engines sample from `model` itself."""
    name = resolve_engine(name, next(model.parameters()).device)
    if name == VLLM:
        from .vllm_engine import VLLMEngine

        if model_dir is None:
            raise ValueError("engine=vllm needs the policy's directory (model_dir)")
        return VLLMEngine(model, tokenizer, model_dir, **options)
    return ENGINES[name](model, tokenizer)


__all__ = ["VLLM", "AUTO", "CacheMismatchError", "ENGINES", "HFEngine", "HFGenerateEngine", "eval_mode", "HFSampler", "OnDeviceSampler", "Rollout",
           "RolloutEngine", "SamplingConfig", "filter_logits", "make_engine", "resolve_engine"]
