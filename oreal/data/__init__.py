"""Problem sets: one record type, loaders with presets, a benchmark registry, prompts,
difficulty balancing and the built-in curriculum."""
from .balance import DEFAULT_BANDS, balance, band_repeats
from .loaders import PRESETS, LoadResult, Preset, load_problems, save_problems
from .prompts import DEFAULT_SYSTEM, PromptConfig, longest_prompt_tokens, render
from .records import DataError, Problem
from .registry import BENCHMARKS, CURRICULUM, load, load_list

__all__ = ["BENCHMARKS", "CURRICULUM", "DEFAULT_BANDS", "DEFAULT_SYSTEM", "PRESETS", "DataError",
           "LoadResult", "Preset", "Problem", "PromptConfig", "balance", "band_repeats", "load",
           "load_list", "load_problems", "longest_prompt_tokens", "render", "save_problems"]
