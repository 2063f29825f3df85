"""Saving and resuming a Trainer: the state a resume needs to continue to the bit, written as an
atomic, hashed checkpoint (`oreal.checkpoint`). Without FSDP2 the models are plain HF
directories; under FSDP2 every rank writes its own shards with torch.distributed.checkpoint."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .. import distributed as dist_utils
from ..models import load_lora_adapter, load_weights, read_weights, save_model
from .state import RunState

CREDIT = "credit"  # the credit model's folder in checkpoints and final/, and its name in the trainer state
# What trainer_state.pt holds beside the RunState fields and the optimiser states, by its key there,
# in the order a resume loads them (the RNGs last): the policy's and the credit model's schedules, the
# question sampler, the selection generator, the skill booster, the rollouts ahead (max_staleness: the
# batches sampled and in flight) and the global RNGs. The weights are
# `Checkpointing._models()`, the optimisers `_optimizers()`.
STATEFUL = ("sched", "credit_sched", "sampler", "select_gen", "booster", "ahead", "rng")


class Checkpointing:
    """Mixed into `oreal.recipes.train.Trainer`: what a resume needs to continue to the bit, read
    from the trainer's parts (policy, credit model, their optimisers, and the parts `STATEFUL` names)
    and its `RunState`, and written back."""

    def _models(self) -> dict:
        return {"policy": self.policy, **({CREDIT: self.credit.model} if self.credit is not None else {})}

    def _stateful(self) -> dict:
        """Each part of `STATEFUL`: (read its state, load a state), or None where this run has none."""
        credit, booster = self.credit, self.booster
        parts = {"sched": (self.sched.state_dict, self.sched.load_state_dict),
                 "credit_sched": None if credit is None else (credit.sched.state_dict, credit.sched.load_state_dict),
                 "sampler": (self.sampler.state_dict, self.sampler.load_state_dict),
                 "select_gen": (self.select_gen.get_state, self.select_gen.set_state),
                 "booster": (booster.state_dict, booster.load_state_dict) if booster else None,
                 "ahead": (self.ahead.state_dict, self.ahead.load_state_dict) if self.ahead else None,
                 "rng": (ckpt.rng_state, ckpt.set_rng_state)}
        assert tuple(parts) == STATEFUL
        return parts

    def state_dict(self) -> dict:
        """Everything but the weights that a resume needs to continue to the bit. Under FSDP2 the
        optimiser states are not here but sharded beside the weights (`sharded_optim` names them)."""
        st = {**dataclasses.asdict(self.state), **{k: p and p[0]() for k, p in self._stateful().items()},
              "models": sorted(self._models()), "threads": torch.get_num_threads()}
        if self.fsdp:
            st["sharded_optim"] = sorted(self._stepped_optimizers())
        else:
            st["opt"] = self.opt.state_dict()
            st["credit_opt"] = self.credit.opt.state_dict() if self.credit is not None else None
        return st

    def _stepped_optimizers(self) -> dict:
        """The optimisers that hold state (a frozen actor's has none yet), by model name."""
        return {name: opt for name, opt in self._optimizers().items() if opt.state}

    def _optimizers(self) -> dict:
        return {"policy": self.opt, **({CREDIT: self.credit.opt} if self.credit is not None else {})}

    def save_checkpoint(self, root: Path, keep_last: int) -> Path | None:
        """Call on every rank; rank 0 seals the checkpoint and returns its path. Without FSDP2 the
        models are plain HF directories; under FSDP2 every rank writes its own shards of weights and
        optimiser states with torch.distributed.checkpoint, so no process holds the full state.
        With rollouts ahead it first waits for the batches sampled from weights older than these."""
        if self.ahead:
            self.ahead.settle(self.state.step)
        state, best = self.state_dict(), self.state.best
        meta, keep = {"best": best}, ({best["step"]} if best else set())

        def write(d: Path):
            if not self.fsdp:
                self._write_models(d, {})
            torch.save(state, d / "trainer_state.pt")

        if self.fsdp:  # rank 0 stages the directory, every rank writes its shards into it
            if self.rank == 0:
                ckpt.stage(root, self.state.step)
            dist_utils.barrier()
            dist_utils.save_sharded(ckpt.staging_dir(root, self.state.step) / "sharded", self._models(),
                                    self._stepped_optimizers())
        path = None
        if self.rank == 0:
            path = ckpt.save_checkpoint(root, self.state.step, write, meta, keep_last, keep, staged=self.fsdp)
        dist_utils.barrier()
        return path

    def load_checkpoint(self, path: Path) -> None:
        st = ckpt.load_trainer_state(path)
        if st.get("ahead") and self.ahead is None:
            raise ckpt.CheckpointError(f"{path} was written with max_staleness={st['ahead']['staleness']} and holds "
                                       f"the batches it sampled ahead; resume with that max_staleness")
        if self.credit is not None and CREDIT not in st.get("models", [CREDIT]):
            raise ckpt.CheckpointError(f"{path} has no credit model but this config uses one (algo.token_weights)")
        if (path / "sharded").is_dir():  # DCP shards, resharded to this run's world size
            opts = self._optimizers()
            dist_utils.load_sharded(path / "sharded", self._models(),
                                    {n: opts[n] for n in st["sharded_optim"] if n in opts})
        else:
            if self.cfg.lora.enabled:
                load_lora_adapter(self.policy, path / "policy")
            elif self.fsdp:
                dist_utils.load_full_state_dict(self.policy, read_weights(path / "policy"))
            else:
                load_weights(self.policy, path / "policy")
            dist_utils.load_optimizer_state(self.policy, self.opt, st["opt"])
            if self.credit is not None:
                folder = path / CREDIT
                if not folder.is_dir():
                    raise ckpt.CheckpointError(f"{path} has no credit model but this config uses one")
                self.credit.model.load(folder)
                dist_utils.load_optimizer_state(self.credit.model, self.credit.opt, st["credit_opt"])
                self.credit.model.after_optimizer_load(self.credit.opt)
        if self.credit is not None:
            self.credit.calibrate = False  # the checkpoint's calibration, not a new one from the next batch
        for key, part in self._stateful().items():
            if part is not None and st.get(key) is not None:
                part[1](st[key])
        if self.cfg.device == "cpu" and not self.cfg.threads and st.get("threads"):
            # the thread count can change a result's last bits: a resume keeps the run's own
            torch.set_num_threads(st["threads"])
            self.log(f"torch threads: {st['threads']}, as the run had (threads=N sets another)")
        self.state = RunState(**{f.name: st[f.name] for f in dataclasses.fields(RunState)})
        self.push_weights()  # an engine with its own weights samples the resumed ones

    def _full_weights(self) -> dict:
        """Unsharded weights under FSDP2 (a collective); without FSDP2 an empty dict: the models
        save their own state."""
        if not self.fsdp:
            return {}
        return {name: dist_utils.full_state_dict(m) for name, m in self._models().items()}

    def _write_models(self, path: Path, weights: dict) -> None:
        save_model(self.policy, self.tok, path / "policy", weights.get("policy"))
        if self.credit is not None:
            self.credit.model.save(path / CREDIT, self.tok, weights.get(CREDIT))

    def save(self, path: Path) -> None:
        """Policy and credit model as plain HF directories (every rank calls it; rank 0 writes)."""
        weights = self._full_weights()
        if self.rank == 0:
            self._write_models(path, weights)
        dist_utils.barrier()
