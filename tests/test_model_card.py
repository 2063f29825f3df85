"""final/policy is a Hub-ready directory (issue 40): a model card, README.md with the Hugging Face
front matter, and a body with the algorithm, steps and the run's evaluation numbers."""
import json

import yaml

from oreal.data import curriculum, save_problems
from oreal.recipes.train import train
from oreal.training.config import build_config
from oreal.training.model_card import model_card


def _front_matter(text):
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_a_short_run_writes_a_model_card_with_its_evaluations(tmp_path, verifier):
    save_problems(curriculum.generate(20, "train", seed=0), tmp_path / "train.jsonl")
    save_problems(curriculum.generate(4, "test", seed=0), tmp_path / "test.jsonl")
    out = tmp_path / "run"
    cfg = build_config(None, [f"out={out}", "policy=default", f"data={tmp_path / 'train.jsonl'}",
                              f"eval_data={tmp_path / 'test.jsonl'}", "eval_every=1", "steps=2", "batch_questions=2",
                              "samples=2", "threads=1", "sampling.max_new_tokens=16", "algo.actor_freeze_steps=0",
                              "prompt.use_chat_template=false", "prompt.system=null"])
    train(cfg, verifier, log=lambda *a, **k: None)
    text = (out / "final" / "policy" / "README.md").read_text()
    meta, body = _front_matter(text)
    assert meta["library_name"] == "transformers" and meta["base_model"] == "default"
    assert meta["tags"] == ["oreal", "reinforcement-learning", "math"]
    assert "datasets" not in meta  # a local file is no Hub data set
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "algorithm: `oreal`" in body and "steps: 2 of 2" in body
    for r in (rows[0], rows[-1]):
        assert f"| {r['step']} | {r['eval_pass@1']:.3f} |" in body


def test_the_demos_before_after_table_goes_into_the_card():
    cfg = build_config(None, ["out=/tmp/x", "data=gsm8k", "steps=5"])
    ev = {"before": {"pass@1": 0.25, "pass@k": 0.5, "maj@k": 0.3, "n": 40, "k": 4},
          "after": {"pass@1": 0.375, "pass@k": 0.625, "maj@k": 0.4, "n": 40, "k": 4}}
    meta, body = _front_matter(model_card(cfg, [{"step": 1, "actor_updated": True}], ev))
    assert meta["datasets"] == ["gsm8k"]
    assert "| pass@1 | 0.250 | 0.375 | +0.125 |" in body and "| pass@4 | 0.500 | 0.625 | +0.125 |" in body
    assert "steps: 1 of 5 (1 policy updates)" in body
