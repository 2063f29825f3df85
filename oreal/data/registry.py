"""Named benchmarks resolved to local files, each with its preset and extraction mode."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import curriculum
from .loaders import LoadResult, load_problems
from .records import DataError, Problem

ENV_DATA_DIR = "OREAL_DATA_DIR"


@dataclass(frozen=True)
class Benchmark:
    file: str
    preset: str
    extract: str  # how to read *model* answers: plain-text benchmarks need `auto`
    count: int


BENCHMARKS: dict[str, Benchmark] = {
    "math500": Benchmark("math500.jsonl", "math", "boxed", 500),
    "gsm8k": Benchmark("gsm8k_test.jsonl", "gsm8k", "auto", 1319),
    "gsm8k_train": Benchmark("gsm8k_train.jsonl", "gsm8k", "auto", 7473),
    "aime24": Benchmark("aime24.jsonl", "aime24", "boxed", 30),
    "aime25": Benchmark("aime25.jsonl", "aime25", "boxed", 30),
    "amc23": Benchmark("amc23.jsonl", "amc23", "boxed", 40),
    "minerva": Benchmark("minerva_math.jsonl", "minerva", "boxed", 272),
    "olympiadbench": Benchmark("olympiadbench.jsonl", "olympiadbench", "boxed", 675),
}

# The built-in curriculum's named splits (sizes chosen for the demo and tests).
CURRICULUM = {"curriculum_train": ("train", 20000), "curriculum_test": ("test", 500)}


def data_dir(explicit: str | Path | None = None) -> Path:
    d = explicit or os.environ.get(ENV_DATA_DIR)
    if not d:
        raise DataError(f"no benchmark data directory: set data_dir= (a config key), --data-dir (oreal eval, "
                        f"oreal data) or {ENV_DATA_DIR}")
    return Path(d)


def load(name_or_path: str, data_dir_: str | Path | None = None, preset: str | None = None,
         **kw) -> LoadResult:
    """A registry name (`math500`, `curriculum_test`, ...) or a path to a data file/dataset."""
    if name_or_path in CURRICULUM:
        split, n = CURRICULUM[name_or_path]
        return LoadResult(curriculum.generate(n, split), [])
    if name_or_path in BENCHMARKS:
        b = BENCHMARKS[name_or_path]
        path = data_dir(data_dir_) / b.file
        if not path.exists():
            raise DataError(f"{name_or_path}: {path} not found")
        return load_problems(path, preset or b.preset, source_name=name_or_path,
                             extract=kw.pop("extract", None) or b.extract, **kw)
    return load_problems(name_or_path, preset, **kw)  # unset: TRL's or veRL's format if it is one, else oreal_records


def load_list(name_or_path: str, **kw) -> list[Problem]:
    res = load(name_or_path, **kw)
    if res.skipped:
        import sys

        print(f"warning: skipped {len(res.skipped)} bad rows of {name_or_path}; first: "
              f"{res.skipped[0]}", file=sys.stderr)
    return res.problems
