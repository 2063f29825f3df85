"""Build a registered engine by name."""
from __future__ import annotations

from .engine import EngineSetup, RolloutEngine, compute_device
from .registry import engine_class


def make_engine(name: str, model, tokenizer, setup: EngineSetup | None = None) -> RolloutEngine:
    """The engine `name` (or `auto`) over `model`. `setup` (model directory, the engine's options,
    dtype, seed, ...) is for engines that hold their own copy of the weights; the HF engines
    sample from `model` itself."""
    setup = setup or EngineSetup()
    cls = engine_class(name, compute_device(model, setup))
    return cls(model, tokenizer, setup)
