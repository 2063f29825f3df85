"""Rollout engines behind one interface (`oreal.rollout.engine.RolloutEngine`: `sample`,
`update_weights`, `release`/`resume`, `close`, `max_model_len`), registered by name in
`oreal.rollout.registry.ENGINES` and imported on first use (this package loads torch only when a
name below other than the registry's is first read, so the command line starts fast)."""
from importlib import import_module

from .registry import (AUTO, ENGINE_NAMES, ENGINES, check_installed, engine_class, option_sections, options_class,
                       resolve_engine)

_LAZY = {name: "engine" for name in ("CacheMismatchError", "EngineSetup", "HFEngine", "HFGenerateEngine", "HFSampler",
                                      "Rollout", "RolloutEngine", "SamplingConfig", "eval_mode")}
_LAZY.update(OnDeviceSampler="on_device", filter_logits="sampling", make_engine="factory", check_length="lengths",
             fit_max_new_tokens="lengths", window_of="lengths")


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AUTO", "CacheMismatchError", "ENGINES", "ENGINE_NAMES", "EngineSetup", "HFEngine", "HFGenerateEngine",
           "HFSampler", "OnDeviceSampler", "Rollout", "RolloutEngine", "SamplingConfig", "check_installed",
           "check_length", "engine_class", "eval_mode", "filter_logits", "fit_max_new_tokens", "make_engine",
           "option_sections", "options_class", "resolve_engine", "window_of"]
