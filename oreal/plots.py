"""PNG plots of a run's metrics (matplotlib, headless)."""
from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def series(metrics: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of every step that recorded `key`."""
    return [(m["step"], m[key]) for m in metrics if m.get(key) is not None]


def _smooth(xs, k=5):
    out, acc = [], []
    for x in xs:
        acc.append(x)
        acc = acc[-k:]
        out.append(sum(acc) / len(acc))
    return out


def credit_label(credit: str | None) -> str:
    """The credit model as a plot or a page names it: the run's `algo.credit` (token_head is the
    paper's token RM, logprob and surprise score by log-probabilities), never a fixed name."""
    return f"credit model ({credit})" if credit else "credit model"


def legend(ax, **kw) -> None:
    """A legend only where something plotted has a label (matplotlib warns on an empty one: a
    2-step run has no policy loss or KL while the actor is frozen)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def learning_curve(metrics: list[dict], path: str | Path, before: float | None = None,
                   after: float | None = None, title: str = "OREAL on the built-in curriculum",
                   credit: str | None = None) -> None:
    """reward and pass@1, the loss terms, KL and entropy; `credit`: the run's `algo.credit`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    reward = [m["reward"] for m in metrics]
    ax.plot(steps, reward, alpha=0.35, color="C0", label="train reward (per step)")
    ax.plot(steps, _smooth(reward), color="C0", label="train reward (5-step mean)")
    ev = series(metrics, "eval_pass@1")
    if ev:
        ax.plot(*zip(*ev), "o-", color="C3", label="held-out pass@1")
    if before is not None:
        ax.axhline(before, ls="--", color="gray", label=f"before: {before:.3f}")
    if after is not None:
        ax.axhline(after, ls="--", color="C2", label=f"after: {after:.3f}")
    ax.set_xlabel("step")
    ax.set_ylim(0, 1)
    ax.set_title("reward and pass@1")
    legend(ax, fontsize=7)
    ax = axes[1]
    for key, label in (("loss_pos", "positive (BC)"), ("loss_neg", "negative (PG)"),
                       ("credit_loss", f"{credit_label(credit)} BCE")):
        pts = series(metrics, key)
        if pts:
            ax.plot(*zip(*pts), "o-" if len(pts) < 15 else "-", ms=3, label=label)  # a point shows one step
    ax.set_xlabel("step")
    ax.set_title("losses")
    legend(ax, fontsize=7)
    ax = axes[2]
    for key, label in (("kl", "KL to reference (k3)"), ("entropy", "entropy")):
        pts = series(metrics, key)
        if pts:
            ax.plot(*zip(*pts), "o-" if len(pts) < 15 else "-", ms=3, label=label)  # a point shows one step
    ax.set_xlabel("step")
    ax.set_title("KL and entropy")
    legend(ax, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
