"""Experiment trackers for the training metrics: TensorBoard and Weights & Biases.

Both are optional (`pip install oreal[tracking]`); `trackers: [tensorboard, wandb]` in a train
config turns them on. W&B runs offline unless WANDB_MODE says otherwise, so it works without an
account or network; `wandb sync RUN_DIR/wandb/offline-run-*` uploads later.
"""
from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

from .preflight import require

TRACKERS = ("tensorboard", "wandb")


def _scalars(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or k == "step":
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


class TensorBoard:
    def __init__(self, out: Path, config: dict):
        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        self.writer.add_text("config", "```\n" + _yaml(config) + "\n```")

    def log(self, metrics: dict, step: int) -> None:
        for k, v in _scalars(metrics).items():
            self.writer.add_scalar(k.replace("@", "_at_"), v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, out: Path, config: dict, project: str):
        require("wandb")
        import wandb
        id_file = out / "wandb_id.txt"  # the same W&B run continues after a resume
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        self.run = wandb.init(project=project, dir=str(out), id=run_id, resume="allow", config=config,
                              mode=os.environ.get("WANDB_MODE", "offline"), reinit="finish_previous")

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(_scalars(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def _yaml(config: dict) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)


class Trackers:
    """Fan metrics out to every enabled tracker."""

    def __init__(self, names, out: Path, config: dict, wandb_project: str = "oreal"):
        self.items = []
        for name in names:
            if name == "tensorboard":
                self.items.append(TensorBoard(out, config))
            elif name == "wandb":
                self.items.append(WandB(out, config, wandb_project))
            else:
                raise ValueError(f"unknown tracker {name!r}; choose from {TRACKERS}")

    def log(self, metrics: dict, step: int) -> None:
        for t in self.items:
            t.log(metrics, step)

    def close(self) -> None:
        for t in self.items:
            t.close()
        self.items = []
