"""oreal: OREAL (Lyu et al., arXiv 2502.06781) reinforcement learning for math reasoning.

Kept import-light on purpose: verifier workers import this package and must not pull in torch.
"""
__version__ = "0.1.0"
