"""Token credit, one stage of a step: the credit model (`algo.credit`, `oreal.models.credit`), its
optimiser and schedule, its update on the step's outcomes and the token weights it gives the
policy loss. The math is `oreal.algo.credit`; this composes it with the model.

    stats = credit.update(batch, micro, counts)    # BCE on the outcomes, backward, one step
    weights = credit.weights(batch, stats.scores)  # [N, T] for the policy loss

`stats.scores` are the scores before the step (the reference's order); `credit.scores(batch,
micro)` scores afresh (after the step: `algo.weights_after_credit_step`). A step takes both through
`credit.token_credit(batch, micro, counts)`, or `no_credit(batch)` without a credit model.
"""
from __future__ import annotations

import time

import torch

from .. import algo
from .. import distributed as dist_utils
from ..models.credit import CreditModel
from ..optim import guarded_step, make_optimizer
from .batch import MicroBatch, SelectedBatch
from .state import CreditStats, DeviceSums

_SUMS = ("loss", "correct")


class CreditStage:
    def __init__(self, model: CreditModel, cfg, clock=time.perf_counter, log=print):
        o = cfg.optim
        self.model, self.algo, self.grad_clip, self.fsdp, self.clock = model, cfg.algo, o.grad_clip, cfg.fsdp, clock
        self.log = log
        # `algo.credit_init: auto`: a log-prob credit calibrated on its first batch (a resume loads its own)
        self.calibrate = cfg.algo.credit_init == algo.AUTO_INIT and hasattr(model, "set_calibration")
        self.opt, self.sched = make_optimizer(model.param_groups(o.weight_decay, cfg.algo.credit_calib_lr),
                                              o.credit_lr, o.weight_decay, o.warmup, cfg.steps, o.credit_min_lr,
                                              o.eps, betas=o.betas)

    def scores(self, batch: SelectedBatch, micro: list[MicroBatch]) -> torch.Tensor:
        """[N, T] scores w_t of the batch from the credit model as it is now (no gradient)."""
        out = torch.zeros_like(batch.mask)
        with torch.no_grad():
            for mb in micro:
                w = _scores(self.model, mb)
                if mb.real:
                    out[mb.rows] = w.float()
        dist_utils.reshard_root(self.model)
        return out

    def weights(self, batch: SelectedBatch, scores: torch.Tensor) -> torch.Tensor:
        """[N, T] token weights for the policy loss from the scores (`algo.token_importance_weights`)."""
        a = self.algo
        return algo.token_importance_weights(scores, batch.mask, batch.positive, a.tau, a.token_weights,
                                             a.topk_ratio, a.token_weights_on)

    def update(self, batch: SelectedBatch, micro: list[MicroBatch], counts: algo.TokenCounts) -> CreditStats:
        """The credit model's BCE on the outcomes (backward over all micro-batches, summed over
        ranks) and its optimiser step; `scores` in the stats are those before the step."""
        t0 = self.clock()
        if self.calibrate:
            self.auto_calibrate(batch, micro)
        sums = DeviceSums(_SUMS, batch.mask.device)
        scores = torch.zeros_like(batch.mask)
        self.opt.zero_grad(set_to_none=True)
        for mb in micro:
            b = mb.batch
            w = _scores(self.model, mb)
            loss = algo.credit_sequence_loss(w, b.mask, b.reward)
            if not mb.real:  # an all-padding row would otherwise add BCE(0.5, 0) = ln 2
                loss = loss * 0.0
            (loss / counts.seqs).backward()
            sums.add("loss", loss)
            sums.add("correct", algo.credit_correct(w, b.mask, b.positive))
            if mb.real:
                scores[mb.rows] = w.detach().float()
        sums = sums.total()
        wins, pairs = _pair_ranking(batch, scores)
        if not self.fsdp:
            dist_utils.all_reduce_grads(self.model)
        stats = CreditStats(lr=self.sched.get_last_lr()[0], scores=scores)
        stats.stepped = guarded_step(self.model, self.opt, self.sched, self.grad_clip, sums["loss"])
        stats.finite = stats.stepped
        if stats.stepped:
            stats.loss, stats.acc = sums["loss"] / counts.seqs, sums["correct"] / counts.seqs
            stats.pair_rank = wins / pairs if pairs else None
        stats.seconds = self.clock() - t0
        return stats

    def token_credit(self, batch: SelectedBatch, micro: list[MicroBatch],
                     counts: algo.TokenCounts) -> tuple[torch.Tensor, torch.Tensor, CreditStats]:
        """The update on this batch's outcomes, then the [N, T] token weights for the policy loss and
        the scores they came from: the scores before the update (the reference's order) or, with
        `algo.weights_after_credit_step`, after it."""
        stats = self.update(batch, micro, counts)
        scores = stats.scores
        if stats.stepped and self.algo.weights_after_credit_step:  # hindsight: it has seen these outcomes
            scores = self.scores(batch, micro)
        return self.weights(batch, scores), scores, stats

    def auto_calibrate(self, batch: SelectedBatch, micro: list[MicroBatch]) -> tuple[float, float]:
        """`algo.credit_init: auto`: a, b from this batch's log-probs under the model as built (a, b =
        1, 0: its scores are the log-probs), from sums over every rank, so every rank sets the same
        (`algo.auto_calibration`)."""
        self.calibrate = False
        self.model.set_calibration(1.0, 0.0)
        logp = self.scores(batch, micro)
        sums = dist_utils.sum_floats(algo.calibration_sums(logp, batch.mask, batch.positive))
        a, b = algo.auto_calibration(sums, self.algo.tau)
        self.model.set_calibration(a, b)
        self.log(f"credit calibration (algo.credit_init=auto): a={a:.4g}, b={b:.4g} from the first batch's "
                 f"log-probs (mean {sums[4] / max(sums[5], 1):.3f} over {int(sums[5])} tokens)")
        return a, b


def no_credit(batch: SelectedBatch) -> tuple[torch.Tensor, None, CreditStats]:
    """`CreditStage.token_credit` without a credit model: every token weighs 1, there are no scores."""
    return torch.ones_like(batch.mask), None, CreditStats()


def _pair_ranking(batch: SelectedBatch, scores: torch.Tensor) -> tuple[float, int]:
    """`algo.pair_ranking` over the whole batch, the same on every rank: token balancing may train a
    question's rows on different ranks, so every row's (question, correct, mean score) is gathered."""
    seq = algo.masked_mean(scores, batch.mask).cpu().double()
    q = torch.tensor([b for b, _ in batch.rows], dtype=torch.float64)
    q, pos, seq = dist_utils.all_gather_rows(torch.stack([q, batch.positive.cpu().double(), seq], 1)).T
    return algo.pair_ranking(seq.tolist(), (pos > 0.5).tolist(), q.long().tolist())


def _scores(model: CreditModel, mb: MicroBatch) -> torch.Tensor:
    """[m, T] scores of a micro-batch's rows, from its forward inputs (packed or padded)."""
    x = mb.inputs
    return x.rows(model.scores(x.ids, x.attn, x.targets, x.position_ids))
