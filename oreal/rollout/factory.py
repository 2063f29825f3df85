"""Build a registered engine by name."""
from __future__ import annotations

from .engine import EngineSetup, RolloutEngine
from .registry import engine_class


def make_engine(name: str, model, tokenizer, setup: EngineSetup | None = None) -> RolloutEngine:
    """The engine `name` (or `auto`) over `model`. `setup` (model directory, the engine's options,
    dtype, seed, ...) is for engines that hold their own copy of the weights; the HF engines
    sample from `model` itself."""
    cls = engine_class(name, next(model.parameters()).device)
    return cls(model, tokenizer, setup or EngineSetup())
