"""oreal: OREAL (Lyu et al., arXiv 2502.06781) reinforcement learning for math reasoning.

    from oreal import OREALConfig, OREALTrainer
    OREALTrainer(model="default", train_dataset=problems, args=OREALConfig(algo="grpo"),
                 reward=lambda question, response, gold: ...).train()

Kept import-light on purpose: verifier workers import this package and must not pull in torch,
so the training API is imported on first use.
"""
__version__ = "0.1.0"

_LAZY = {
    "OREALConfig": "oreal.recipes.api", "OREALTrainer": "oreal.recipes.api", "Callback": "oreal.training.callbacks",
    "Problem": "oreal.data", "RewardFunction": "oreal.verify", "Verifier": "oreal.verify",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'oreal' has no attribute {name!r}")
