"""The demo's plot and `oreal report` (issue 41): no matplotlib warning on a short run, and the
credit model named as the run's config names it, not as a fixed "token RM"."""
import json
import warnings

import pytest
import yaml
from matplotlib.figure import Figure

from oreal.plots import learning_curve
from oreal.report import write_report

# two steps with the actor frozen: no policy loss, KL or entropy yet, only the credit model trained
FROZEN = [{"step": s, "reward": 0.5, "kl": None, "entropy": None, "loss_pos": None, "loss_neg": None,
           "loss_kl": None, "credit_loss": 0.69, "credit_acc": 0.5, "credit_pair_rank": None} for s in (1, 2)]


@pytest.fixture
def drawn(monkeypatch):
    """The titles and legend entries of every figure saved."""
    seen = []
    real = Figure.savefig

    def spy(fig, *args, **kw):
        for ax in fig.axes:
            seen.append(ax.get_title())
            if ax.get_legend():
                seen.extend(t.get_text() for t in ax.get_legend().get_texts())
        return real(fig, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def _run(tmp_path, algo: dict):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in FROZEN))
    (run / "config.yaml").write_text(yaml.safe_dump({"steps": 2, "algo": algo}))
    return run


def test_a_two_step_run_plots_without_a_warning_and_names_its_credit_model(tmp_path, drawn):
    run = _run(tmp_path, {"name": "oreal", "token_weights": "threshold", "credit": "logprob"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend"
        learning_curve(FROZEN, tmp_path / "curve.png", 0.4, 0.5, credit="logprob")
        page = (write_report(run) / "index.html").read_text()
    assert "credit model (logprob) BCE" in drawn and "credit model (logprob)" in drawn  # legend, panel title
    assert "token weights of the credit model (logprob)" in page
    assert not any("token RM" in t or "token-RM" in t for t in drawn + [page])


def test_a_run_without_a_credit_model_names_none(tmp_path, drawn):
    run = _run(tmp_path, {"name": "grpo", "token_weights": "none", "credit": "token_head"})
    page = (write_report(run) / "index.html").read_text()
    assert "token_head" not in page and "token_head" not in " ".join(drawn)
