import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(os.environ.get("OREAL_DATA_DIR", ROOT.parent / "shared" / "data" / "benchmarks"))


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A Trainer sets the process's torch thread count (from the machine's load unless `threads`
    is fixed): give every test the count it started with, so no test depends on the one before."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


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


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A 2-layer policy with its own tokenizer, built in a second: (directory, model, tokenizer,
    the curriculum problems it was built from)."""
    from oreal.data import curriculum, render
    from oreal.models import TinyModelConfig, build_tiny_policy, save_model, train_tokenizer

    probs = curriculum.generate(300, "train", seed=0)
    tok = train_tokenizer([render(p.question) + p.solution for p in probs], vocab_size=200)
    model = build_tiny_policy(tok, TinyModelConfig(hidden_size=32, layers=2, heads=2, kv_heads=1,
                                                   intermediate_size=64, max_positions=128))
    path = tmp_path_factory.mktemp("tiny")
    save_model(model, tok, path)
    return str(path), model, tok, probs
