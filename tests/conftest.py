import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(os.environ.get("OREAL_DATA_DIR", ROOT.parent / "shared" / "data" / "benchmarks"))


@pytest.fixture(scope="session")
def bench_dir() -> Path:
    if not BENCH_DIR.exists():
        pytest.skip(f"benchmark data not found at {BENCH_DIR}")
    return BENCH_DIR


@pytest.fixture(scope="session")
def verifier():
    from oreal.verify import Verifier

    with Verifier(workers=2, timeout=4.0, memory_mb=1024) as v:
        yield v
