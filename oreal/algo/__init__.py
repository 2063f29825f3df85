"""OREAL's math (advantages, filters, selection, token weights, losses) as pure functions."""
from .core import *  # noqa: F401,F403
from .core import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS  # noqa: F401
