"""The command line end to end: data show, eval, demo (a short one), train with overrides."""
import json

import pytest

from cli_helpers import oreal as _oreal
from cli_helpers import oreal_all as _oreal_all


def test_data_show_json(bench_dir):
    r = _oreal("data", "show", "aime24", "--data-dir", str(bench_dir), "--json", "--n", "2")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["name"] == "aime24" and d["count"] == 30
    assert len(d["examples"]) == 2 and {"question", "gold"} <= set(d["examples"][0])
    r = _oreal("data", "show", "curriculum_test", "--n", "1")
    assert r.returncode == 0 and "curriculum_test: 500 problems" in r.stdout and "[gold:" in r.stdout


def test_data_show_bad_file_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q", "gold": "1"}\n{"question": "q"}\n')
    r = _oreal("data", "show", str(p))
    assert r.returncode == 0 and "1 bad rows skipped" in r.stdout  # show skips and reports
    # every row skipped: an error that says so, with the hint for the README's own format
    p.write_text('{"question": "1+1", "gold_answer": "2"}\n')
    r = _oreal("data", "show", str(p))
    assert r.returncode == 1 and "no usable records" in r.stderr and "--preset oreal" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _oreal("data", "show", str(p), "--preset", "oreal")
    assert r.returncode == 0 and "1 problems" in r.stdout
    r = _oreal("data", "show", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 1 and "no such file" in r.stderr


def test_eval_on_curriculum_and_a_real_benchmark(tmp_path, bench_dir):
    out = tmp_path / "res.json"
    r = _oreal("eval", "--model", "default", "--data", "curriculum_test", "--limit", "30", "--k", "2",
               "--out", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert {"pass@1", "pass@k", "maj@k", "n", "k", "by_group"} <= set(d)
    assert d["n"] == 30 and d["k"] == 2 and 0.0 < d["pass@1"] < 1.0
    assert any(g.startswith("skill=") for g in d["by_group"])
    r = _oreal("eval", "--model", "default", "--data", "gsm8k", "--data-dir", str(bench_dir), "--limit", "4",
               "--max-new-tokens", "16", "--out", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["n"] == 4 and d["pass@1"] <= 0.25  # the tiny model knows no GSM8K; the pipeline runs


@pytest.mark.slow
def test_short_demo_writes_summary_metrics_and_plot(tmp_path):
    out = tmp_path / "demo"
    r = _oreal("demo", "--out", str(out), "--steps", "2", "eval_limit=16", "eval_k=1", "batch_questions=4",
               "samples=4", "algo.actor_freeze_steps=1")
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert {"before", "after", "steps", "seconds"} <= set(s)
    assert "pass@1" in s["before"] and "pass@1" in s["after"] and s["steps"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert "before" in r.stdout and "after" in r.stdout
    assert s["steps_planned"] == 2 and not s["time_capped"] and "STOPPED EARLY" not in r.stdout
    # `oreal eval --run` evaluates what the demo trained exactly as the demo did: same numbers
    r = _oreal("eval", "--run", str(out))
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert (ev["n"], ev["k"]) == (16, 1) and ev["pass@1"] == s["after"]["pass@1"]
    # the same directory again: refused before any work, the earlier run untouched
    before = (out / "summary.json").read_bytes()
    r = _oreal("demo", "--out", str(out), "--steps", "2")
    assert r.returncode == 2 and "--overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (out / "summary.json").read_bytes() == before


def test_train_rejects_unknown_keys_with_the_key_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 1\nalgo:\n  name: grpo\n")
    bogus, not_int = _oreal_all(("train", str(cfg), "algo.bogus=1"), ("train", str(cfg), "samples=two"))
    assert bogus.returncode == 2 and "algo.bogus" in bogus.stderr
    assert not_int.returncode == 2 and "samples: expected an integer" in not_int.stderr


def test_passrate_writes_a_balanced_ready_copy(tmp_path):
    from oreal.data import balance, curriculum, load_problems, save_problems

    src = tmp_path / "q.jsonl"
    save_problems(curriculum.generate(6, "test", seed=0), src)
    out = tmp_path / "q_pr.jsonl"
    r = _oreal("data", "passrate", str(src), "--model", "default", "--out", str(out), "--k", "4",
               "--max-new-tokens", "64", "--plain-prompt")
    assert r.returncode == 0, r.stderr
    probs = load_problems(out).problems
    assert len(probs) == 6
    assert all(p.pass_rate in (0.0, 0.25, 0.5, 0.75, 1.0) for p in probs)
    assert len(balance(probs)) == sum({0: 6, 1: 4, 2: 4, 3: 2, 4: 0}[int(p.pass_rate * 4)] if p.pass_rate < 0.8 else 0
                                      for p in probs)
