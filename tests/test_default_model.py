"""The embedded policy is what its recipe (`oreal sft oreal/configs/default_model.yaml`) makes.

The shipped directory carries `recipe.json`: the command, the environment it ran in and the
weights' digest, plus the digest after the recipe's first steps. Bit-equality is promised only in
that environment (torch build, CPU kernel set, thread count): elsewhere the tests skip and say
which part differs. A change to the SFT code, the curriculum, the tokenizer trainer or the model's
initialisation fails the fast test at once; the slow one rebuilds all of it and compares.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from oreal.config import load_config
from oreal.models import default_model_dir, read_safetensors
from oreal.recipes.sft import SFTConfig, environment, run_sft

RECIPE = Path(__file__).resolve().parents[1] / "oreal" / "configs" / "default_model.yaml"
RECORD = json.loads((default_model_dir() / "recipe.json").read_text())


def _same_environment_or_skip() -> None:
    cfg = load_config(SFTConfig, RECIPE)
    torch.set_num_threads(cfg.threads)
    here, then = environment(), RECORD["environment"]
    differ = {k: (then[k], here[k]) for k in ("torch", "cpu_capability", "threads") if then[k] != here[k]}
    if differ:
        pytest.skip(f"the shipped weights are bit for bit only where they were made; here {differ} "
                    f"(recorded, here)")


def _sft(tmp_path, **overrides) -> dict:
    threads = torch.get_num_threads()
    try:
        cfg = load_config(SFTConfig, RECIPE, {"out": str(tmp_path / "sft"), "eval_limit": 0, **overrides})
        return run_sft(cfg, log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)


def test_recipe_states_its_thread_count():
    # threads: 0 would take the machine's count, and a 4-core machine rounds otherwise
    assert load_config(SFTConfig, RECIPE).threads == RECORD["environment"]["threads"]


def test_recipe_first_steps_match_the_record(tmp_path):
    """The tokenizer it trains, the model it initialises and its first steps are the shipped
    run's: the constant learning rate makes a short run the long one's prefix."""
    _same_environment_or_skip()
    first = RECORD["first_steps"]
    summary = _sft(tmp_path, steps=first["steps"])
    assert (tmp_path / "sft/model/tokenizer.json").read_text() == \
        (default_model_dir() / "tokenizer.json").read_text()
    assert summary["weights_sha256"] == first["weights_sha256"], \
        "the SFT recipe's first steps changed: the shipped model is no longer what it makes"


@pytest.mark.slow
def test_recipe_rebuilds_the_shipped_weights(tmp_path):
    _same_environment_or_skip()
    summary = _sft(tmp_path)
    built, shipped = read_safetensors(tmp_path / "sft/model"), read_safetensors(default_model_dir())
    assert built.keys() == shipped.keys()
    worst = max((built[k] - shipped[k]).abs().max().item() for k in built)
    assert worst == 0.0, f"the recipe makes other weights than the shipped ones (max |difference| {worst})"
    assert summary["weights_sha256"] == RECORD["weights_sha256"]
