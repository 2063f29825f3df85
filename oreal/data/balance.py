"""Difficulty balancing: repeat questions by pass-rate band, drop the easy ones."""
from __future__ import annotations

from .records import Problem

# The reference run: [0,0.2) x6, [0.2,0.4) x4, [0.4,0.6) x4, [0.6,0.8) x2, [0.8,1] dropped.
DEFAULT_BANDS: list[tuple[float, float, int]] = [
    (0.0, 0.2, 6), (0.2, 0.4, 4), (0.4, 0.6, 4), (0.6, 0.8, 2), (0.8, 1.0001, 0)]


def band_repeats(pass_rate: float, bands=DEFAULT_BANDS) -> int:
    for lo, hi, times in bands:
        if lo <= pass_rate < hi:
            return times
    raise ValueError(f"pass rate {pass_rate} is in no band")


def balance(problems: list[Problem], bands=DEFAULT_BANDS, unknown: int = 1) -> list[Problem]:
    """Each problem repeated by its band; problems without a pass rate repeat `unknown` times."""
    out = []
    for p in problems:
        times = unknown if p.pass_rate is None else band_repeats(p.pass_rate, bands)
        out.extend([p] * times)
    return out
