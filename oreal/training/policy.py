"""The policy update, one stage of a step beside the credit stage (`oreal.training.credit`): the
policy's optimiser and schedule, the old log-probs of the batch, its update passes and mini-batches,
and the sums of its loss terms. The math is `oreal.algo` (`LossInputs`, `policy_loss`); this
composes it with the model.

    minis = stage.mini_batches(batch, micro, counts, cut)  # algo.mini_batches of the rows
    stats = stage.update(minis, weights)                    # algo.updates_per_batch passes over them

With `algo.updates_per_batch` = `algo.mini_batches` = 1 (every preset) the batch is one optimiser
step and pi_old is the policy itself: `old_logp = logp.detach()` (`LossInputs.on_policy`), no extra
forward, so every ratio is 1 and a ratio objective's clip never binds. Otherwise the policy's
log-probs of every micro-batch are computed once, with no gradient, before the batch's first
optimiser step (with the reference's, also once), and every pass over the batch takes its ratios
against them: from the second optimiser step on the ratios move and the clips bind. Each
mini-batch is one optimiser step normalised over its own rows (its `TokenCounts`, summed over
ranks), as veRL's and TRL's mini-batches are; the rows are split in order, no shuffling.

With rollouts ahead (`max_staleness` > 0) the batch was sampled by a rollout worker from older
weights: pi_old is that behaviour policy, the log-probs the worker kept of the tokens it sampled
(`engine_logp`), at every update, so the ratio objectives' ratios and clips measure the staleness.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from .. import algo
from .. import distributed as dist_utils
from ..optim import guarded_step, make_optimizer
from .batch import MicroBatch, ModelInputs, SelectedBatch
from .logprobs import sequence_logprobs
from .state import DeviceSums, PolicyStats

POLICY_SUMS = ("entropy", *algo.LOSS_SUMS)


@dataclass
class MiniBatch:
    """One optimiser step's share of the batch: its rows (a slice of the batch's), its
    micro-batches (rows relative to the mini-batch) and the counts its loss divides by."""
    rows: slice
    micro: list[MicroBatch]
    counts: algo.TokenCounts


def split_rows(n: int, parts: int) -> list[slice]:
    """`parts` consecutive slices of n rows, as even as can be (some empty when n < parts)."""
    return [slice(i * n // parts, (i + 1) * n // parts) for i in range(parts)]


class PolicyStage:
    """The policy's optimiser step(s) on one batch. `logprobs(model, x, entropy)`: [m, T] log-probs
    (and entropy) of a micro-batch's rows; `clock`: wall time after the device's queued work."""

    def __init__(self, policy, ref, cfg, device, clock=time.perf_counter):
        o, a = cfg.optim, cfg.algo
        self.policy, self.ref, self.algo, self.device, self.clock = policy, ref, a, device, clock
        self.fsdp, self.grad_clip, self.chunk = cfg.fsdp, o.grad_clip, cfg.logprob_chunk
        self.behaviour = cfg.max_staleness > 0  # pi_old: the rollout worker's log-probs of its samples
        # the schedule counts optimiser steps: several a batch stretch it (and its warm-up) alike
        per_batch = a.updates_per_batch * a.mini_batches
        self.opt, self.sched = make_optimizer(policy, o.lr, o.weight_decay, o.warmup * per_batch,
                                              max(1, cfg.steps - a.actor_freeze_steps) * per_batch, o.min_lr, o.eps,
                                              betas=o.betas)

    @property
    def several(self) -> bool:
        """Whether a batch takes more than one optimiser step (then pi_old needs its own forward)."""
        return self.algo.updates_per_batch > 1 or self.algo.mini_batches > 1

    def mini_batches(self, batch: SelectedBatch, micro: list[MicroBatch], counts: algo.TokenCounts,
                     cut) -> list[MiniBatch]:
        """`algo.mini_batches` consecutive shares of the rows, each cut into micro-batches by `cut`
        (`cut_micro_batches` with the run's settings) with its own counts over all ranks. One
        mini-batch: the batch's own micro-batches and counts. Fewer rows than mini-batches (on the
        busiest rank): one mini-batch a row; every rank takes as many, a rank short of rows runs
        empty ones."""
        n = self.algo.mini_batches
        if n > 1:  # a collective: every rank takes as many steps
            n = min(n, dist_utils.max_int(len(batch.rows)))
        if n <= 1:
            return [MiniBatch(slice(None), micro, counts)]
        out = []
        for sl in split_rows(len(batch.rows), n):
            part = batch[sl]
            pos, neg, seqs = dist_utils.sum_floats([*part.token_counts(), float(len(part.rows))])
            out.append(MiniBatch(sl, cut(part), algo.TokenCounts(pos, neg, int(seqs), counts.max_new_tokens)))
        return out

    def update(self, minis: list[MiniBatch], weights: torch.Tensor, update: bool = True) -> PolicyStats:
        """The policy's gradients micro-batch by micro-batch (summed over ranks) and its optimiser
        step, for each mini-batch of each update pass; `update=False` (the actor is frozen) does
        none. A non-finite loss or gradient skips that step. The sums are over every step."""
        passes = self.algo.updates_per_batch
        stats = PolicyStats(tokens=sum(m.counts.all for m in minis) * (passes if update else 1))
        ratio_max = torch.zeros((), device=self.device)
        if not update:
            stats.sums = DeviceSums(POLICY_SUMS, self.device).total()
            stats.ratio_max = dist_utils.max_float(ratio_max.item())
            return stats
        old = self.old_logprobs(minis) if self.several else None
        totals, finite = None, True
        for _ in range(passes):
            for i, mini in enumerate(minis):
                t0 = self.clock()
                sums = DeviceSums(POLICY_SUMS, self.device)
                self.opt.zero_grad(set_to_none=True)
                w_mini = weights[mini.rows]
                for j, mb in enumerate(mini.micro):
                    w = w_mini[mb.rows] if mb.real else torch.ones_like(mb.batch.mask)
                    prior = None if old is None else old[i][j]
                    ratio_max = torch.maximum(ratio_max, self.backward(mb, w, mini.counts, sums, prior))
                if not self.fsdp:  # FSDP2 already summed them in its reduce-scatter
                    dist_utils.all_reduce_grads(self.policy)
                stats.seconds += self.clock() - t0
                s = sums.total()  # one host sync an optimiser step
                totals = s if totals is None else {k: totals[k] + s[k] for k in totals}
                t0 = self.clock()
                stepped = guarded_step(self.policy, self.opt, self.sched, self.grad_clip,
                                       s["loss_pos"] + s["loss_neg"] + s["loss_kl"])
                finite = finite and stepped
                stats.steps += int(stepped)
                stats.optim_seconds += self.clock() - t0
        stats.sums = totals
        stats.ratio_max = dist_utils.max_float(ratio_max.item())
        stats.updated, stats.finite = stats.steps > 0, finite
        return stats

    def old_logprobs(self, minis: list[MiniBatch]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """(log pi_old, log pi_ref) of every micro-batch of every mini-batch, with no gradient, from
        the policy as it is before the batch's first optimiser step (and the reference)."""
        with torch.no_grad():
            out = [[(mb.batch.engine_logp if self.behaviour else self.logprobs(self.policy, mb.inputs, entropy=False)[0],
                     self.ref_logprobs(mb.inputs)) for mb in mini.micro] for mini in minis]
        dist_utils.reshard_root(self.policy)
        return out

    def backward(self, micro: MicroBatch, weights: torch.Tensor, counts: algo.TokenCounts, sums: DeviceSums,
                 prior: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One micro-batch's policy gradients, its loss sums added to `sums` (on the device);
        returns the largest pi_trainer / pi_engine of its sampled tokens (0 without the engine's
        log-probs). The models see the micro-batch's inputs (packed or padded); the loss sees its
        rows, as one `algo.LossInputs`: pi_old is the policy itself without `prior`, else
        `prior` = (log pi_old, log pi_ref) from `old_logprobs`."""
        mb, x = micro.batch, micro.inputs
        logp, entropy = self.logprobs(self.policy, x)
        sums.add("entropy", (entropy * mb.mask).sum())
        if prior is None:
            with torch.no_grad():
                ref_logp = self.ref_logprobs(x)
            inputs = algo.LossInputs.on_policy(logp, ref_logp, mb.mask, mb.positive, mb.adv, weights, counts,
                                               mb.engine_logp)
            if self.behaviour:
                inputs = dataclasses.replace(inputs, old_logp=mb.engine_logp)
        else:
            inputs = algo.LossInputs(logp=logp, old_logp=prior[0], ref_logp=prior[1], engine_logp=mb.engine_logp,
                                     mask=mb.mask, positive=mb.positive, adv=mb.adv, weights=weights, counts=counts)
        out = algo.policy_loss(inputs, self.algo)  # the engine's ratio and algo.tis_cap too
        out.loss.backward()
        for key, value in out.sums.items():
            sums.add(key, value)
        return out.ratio_max

    def ref_logprobs(self, x: ModelInputs) -> torch.Tensor:
        """[m, T] log pi_ref of the rows (call with no gradient): the frozen copy, or under LoRA the
        base model, the adapter off."""
        if self.ref is not None:
            return self.logprobs(self.ref, x, entropy=False)[0]
        with self.policy.disable_adapter():
            return self.logprobs(self.policy, x, entropy=False)[0]

    def logprobs(self, model, x: ModelInputs, entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[m, T] log-probs of the rows' sampled tokens (and the entropy) under `model`."""
        logp, ent = sequence_logprobs(model, x.ids, x.attn, x.targets, self.chunk, entropy, x.position_ids)
        return x.rows(logp), None if ent is None else x.rows(ent)
