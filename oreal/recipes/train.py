"""The OREAL training loop (Algorithm 1 of the paper) and its baselines, in one readable loop.

Per step: draw B questions -> K rollouts each, graded -> filter by pass rate, select (one pair
per question, or all), advantages -> build the padded batch -> backward (token-RM BCE and its
token weights, then the policy loss: BC on positives, shaped PG on negatives, KL to the
reference) -> clip and step. The math lives in `oreal.algo`; this file composes it. The run
directory's plumbing is in `oreal.training.rundir`, the config in `oreal.training.config`.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .. import algo, evaluation, faults
from .. import checkpoint as ckpt
from .. import distributed as dist_utils
from ..config import to_dict
from ..data import Problem, balance, load_list
from ..errors import DataError, TrainingError
from ..models import LogProbCredit, add_lora, load_policy, load_token_rm, load_tokenizer, token_scores
from ..optim import guarded_step, make_optimizer
from ..rollout import SamplingConfig, make_engine
from ..tracking import Trackers
from ..training.batch import RolloutBatch, SelectedBatch
from ..training.checkpointing import Checkpointing
from ..training.config import TrainConfig
from ..training.rundir import (CappedJsonl, StopOnSignal, check_run_dir, format_step, keep_rows, prepare_run_dir,
                              trajectory_records)
from ..training.sampler import QuestionSampler
from ..training.skills import SkillBooster
from ..training.threads import auto_threads, usable_cores
from ..verify import count_statuses

METRIC_FIELDS = [
    "step", "reward", "pass_rate", "kept_questions", "selected", "positives", "negatives",
    "kl", "entropy", "loss", "loss_pos", "loss_neg", "loss_kl", "rm_loss", "rm_acc", "rm_pair_rank",
    "response_tokens", "unfinished", "verifier_timeouts", "judge_failures", "boosted", "lr", "rm_lr",
    "actor_updated", "skipped", "nonfinite", "tokens_per_s", "train_tokens", "rollout_seconds",
    # where the step's time went (each phase bracketed by a device synchronize on CUDA)
    "sample_seconds", "grade_seconds", "rm_seconds", "policy_seconds", "optim_seconds",
    "seconds", "elapsed", "eta", "threads",
]
_POLICY_SUMS = ("loss_pos", "loss_neg", "loss_kl", "kl", "entropy")
_RM_SUMS = ("rm_loss", "rm_correct", "rm_pair_wins", "rm_pairs")


@dataclass
class Selection:
    """What enters the loss, decided on the whole batch (the same on every rank)."""
    keep: torch.Tensor  # [B] questions whose pass rate is neither 0 nor 1 (all, without the filter)
    rows: list[tuple[int, int]]  # (question, sample) of every selected response
    adv: torch.Tensor  # [B, K] advantages
    positives: int  # selected correct responses


class Trainer(Checkpointing):
    """Holds the models, optimisers and question sampler; `step()` runs one OREAL step."""

    def __init__(self, cfg: TrainConfig, verifier, log=print):
        self.rank, self.world = dist_utils.setup(cfg.device, force=cfg.fsdp)
        self.fsdp = cfg.fsdp
        self.cfg, self.verifier = cfg, verifier
        self.log = log if self.rank == 0 else (lambda *a, **k: None)
        if cfg.device == "cpu":  # fixed for the run: a different count can change the last bits
            threads = cfg.threads or auto_threads()
            torch.set_num_threads(threads)
            if not cfg.threads:
                self.log(f"torch threads: {threads} of {usable_cores()} cores (the idle ones now; threads=N fixes it)")
        torch.manual_seed(cfg.seed)
        self._setup_models()
        self._setup_optimizers()
        self._setup_data()
        self.engine = make_engine(cfg.engine, self.policy, self.tok)
        self.select_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.step_no = 0
        self.actor_steps = 0
        self.nonfinite_streak = 0
        self.best: dict | None = None  # {"step", "eval_pass@1"} of the best evaluation so far
        self.trajectories: list[dict] = []
        self.interrupted: str | None = None  # the signal's name when a run stopped on one

    def _setup_models(self) -> None:
        """Policy, reference (a frozen copy, or the LoRA base with the adapter off) and token RM;
        the order is fixed because the token RM's new head draws from the seeded global RNG."""
        cfg = self.cfg
        self.device = torch.device(dist_utils.local_device(cfg.device))  # where inputs go (FSDP2 offload too)
        self.tok = load_tokenizer(cfg.policy)
        self.policy = load_policy(cfg.policy, cfg.dtype, self.device)
        if cfg.lora.enabled:  # no second copy: the reference is the base model, adapter disabled
            lc = cfg.lora
            self.policy = add_lora(self.policy, lc.r, lc.alpha, lc.dropout, lc.target_modules)
            self.ref = None
        else:
            self.ref = load_policy(cfg.policy, cfg.dtype, self.device).eval().requires_grad_(False)
        self.rm = self._load_credit_model() if cfg.algo.uses_token_rm else None
        if cfg.activation_checkpointing:
            for m in (self.policy, self.rm):
                if m is not None:
                    m.gradient_checkpointing_enable()
        if cfg.fsdp:  # before the optimisers: fully_shard swaps parameters for sharded DTensors
            for m in (self.policy, self.ref, self.rm):
                if m is not None:
                    dist_utils.fsdp_wrap(m, cfg.mixed_precision, cfg.cpu_offload)

    def _load_credit_model(self):
        """The token RM of `algo.credit`: the paper's (token head on the backbone) or a calibrated
        log-prob model (`oreal.models.credit`), from `token_rm` or else the policy."""
        cfg = self.cfg
        src = cfg.token_rm or cfg.policy
        if cfg.algo.credit == "rm":
            return load_token_rm(src, cfg.dtype, self.device)
        scale, offset = cfg.algo.credit_init
        return LogProbCredit(load_policy(src, cfg.dtype, self.device), cfg.algo.credit == "logprob", scale, offset)

    def _setup_optimizers(self) -> None:
        """AdamW with warm-up + cosine for both; the policy's schedule starts after the freeze."""
        cfg, o = self.cfg, self.cfg.optim
        self.opt, self.sched = make_optimizer(self.policy, o.lr, o.weight_decay, o.warmup,
                                              max(1, cfg.steps - cfg.algo.actor_freeze_steps), o.min_lr, o.eps,
                                              betas=o.betas)
        if self.rm is not None:
            calib = self.rm.calibration() if isinstance(self.rm, LogProbCredit) else []
            self.rm_opt, self.rm_sched = make_optimizer(self.rm, o.rm_lr, o.weight_decay, o.warmup, cfg.steps,
                                                        o.rm_min_lr, o.eps, {p: cfg.algo.credit_calib_lr for p in calib},
                                                        betas=o.betas)

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.problems = load_list(cfg.data, data_dir_=cfg.data_dir, preset=cfg.data_preset)
        if cfg.data_balance:  # difficulty balancing: [0,.2) x6, [.2,.4) x4, [.4,.6) x4, [.6,.8) x2, easier dropped
            missing = sum(p.pass_rate is None for p in self.problems)
            if missing:
                raise DataError(f"data_balance=true: {missing} of {len(self.problems)} questions in {cfg.data} have "
                                f"no pass_rate; measure them with `oreal data passrate`")
            n = len(self.problems)
            self.problems = balance(self.problems)
            self.log(f"difficulty balancing: {n} questions -> {len(self.problems)} entries")
        self.sampler = QuestionSampler(len(self.problems), cfg.seed)
        self.booster = None
        if cfg.skills.enabled:
            pool = load_list(cfg.skills.pool, data_dir_=cfg.data_dir) if cfg.skills.pool else None
            self.booster = SkillBooster(cfg.skills, self.problems, cfg.seed, pool, self.log)

    # -- one step ---------------------------------------------------------------------------
    def step(self) -> dict:
        """One step of Algorithm 1. Returns its metrics (every key of METRIC_FIELDS)."""
        a = self.cfg.algo
        t0 = time.time()
        self.step_no += 1
        self.trajectories = []
        questions, n_boosted = self._draw()
        roll = self._rollout(questions)
        if self.booster:  # every question counts here, all-wrong ones included
            self.booster.observe([q.id for q in questions], roll.rewards, self.step_no)
        sel = self._select(roll)
        m = {"step": self.step_no, "reward": roll.rewards.mean().item(),
             "pass_rate": roll.rewards.mean(-1).mean().item(), "kept_questions": int(sel.keep.sum()),
             "selected": len(sel.rows), "boosted": n_boosted, **roll.stats}
        if not sel.rows:  # every question all-right or all-wrong: nothing to learn from
            self.log(f"step {self.step_no}: all {len(questions)} questions filtered out "
                     f"(pass rate 0 or 1); update skipped")
            m.update(skipped=True, actor_updated=False, nonfinite=False)
            self.trajectories = trajectory_records(roll, [], sel.adv, None, self.tok, self.step_no,
                                                   self.cfg.dump_per_step)
            return self._finish(m, t0)
        batch = SelectedBatch.build(roll, sel.rows, sel.adv, self.tok.pad_token_id, self.device)
        counts, m["train_tokens"] = self._token_counts(batch, len(sel.rows))
        update_actor = self.step_no > a.actor_freeze_steps
        sums, weights, rm_metrics = self._backward(batch, counts, update_actor)
        m.update(self._update(sums, counts, update_actor, rm_metrics))
        m.update(positives=sel.positives, negatives=len(sel.rows) - sel.positives, skipped=False,
                 lr=self.sched.get_last_lr()[0])
        self.trajectories = trajectory_records(roll, batch.rows, sel.adv, weights, self.tok, self.step_no,
                                               self.cfg.dump_per_step)
        if self.nonfinite_streak >= self.cfg.max_nonfinite:
            raise TrainingError(f"step {self.step_no}: {self.nonfinite_streak} steps in a row had a non-finite "
                                f"loss or gradient (updates skipped); stopping. Lower the learning rate or "
                                f"check the data, then resume from the last checkpoint.")
        return self._finish(m, t0)

    def _draw(self) -> tuple[list[Problem], int]:
        """This step's B questions: the skill booster's share first, then the sampler's."""
        b = self.cfg.batch_questions
        boosted = self.booster.draw(b) if self.booster else []
        return boosted + [self.problems[i] for i in self.sampler.next(b - len(boosted))], len(boosted)

    def _rollout(self, questions: list[Problem]) -> RolloutBatch:
        """Sample K responses for this rank's share of the questions and grade them; the rewards
        of the whole batch are gathered on every rank."""
        cfg = self.cfg
        t0 = time.time()
        # data parallel: every rank drew the same batch; it samples and grades its share [lo, hi)
        # with one seed per question, so the rollouts do not depend on how the batch is split
        lo, hi = dist_utils.shard_range(len(questions), self.rank, self.world)
        seeds = [(cfg.seed * 1_000_003 + self.step_no * 10_007 + b) % 2**62 for b in range(len(questions))]
        local_rewards = torch.zeros(hi - lo, cfg.samples)
        groups, verdicts, timings = [], [], {}
        with dist_utils.gathered(self.policy):  # FSDP2: full weights for the token-by-token loop
            for b, (_, g, vs) in enumerate(evaluation.sample_and_grade(
                    self.engine, self.tok, questions[lo:hi], self.verifier, cfg.samples, cfg.sampling, cfg.prompt,
                    seed=seeds[lo:hi], timings=timings)):
                groups.append(g)
                local_rewards[b] = torch.tensor([float(v.correct) for v in vs])
                verdicts.extend(vs)
        t_rollout = time.time() - t0
        rewards = dist_utils.all_gather_rows(local_rewards)  # [B, K], the whole batch on every rank
        st = count_statuses(verdicts)
        unfinished, timeouts, judge_failed, resp_tokens = dist_utils.sum_floats(
            [st["unfinished"], st["timeout"], st["judge_failed"], sum(len(r.response_ids) for g in groups for r in g)])
        stats = {"unfinished": int(unfinished), "verifier_timeouts": int(timeouts),
                 "judge_failures": int(judge_failed), "response_tokens": int(resp_tokens),
                 "rollout_seconds": t_rollout, "sample_seconds": timings.get("sample", 0.0),
                 "grade_seconds": timings.get("grade", 0.0)}
        return RolloutBatch(questions, groups, rewards, lo, hi, stats)

    def _select(self, roll: RolloutBatch) -> Selection:
        a = self.cfg.algo
        rewards = roll.rewards
        keep = algo.pass_rate_filter(rewards) if a.filter else torch.ones(len(rewards), dtype=torch.bool)
        chosen = algo.select_pairs(rewards, keep, a.select, self.select_gen)
        adv = algo.group_advantages(rewards, a.advantage)
        rows = [(b, k) for b, k in chosen.nonzero().tolist()]
        positives = int(sum(rewards[b, k].item() > 0.5 for b, k in rows))
        return Selection(keep, rows, adv, positives)

    def _token_counts(self, batch: SelectedBatch, n_selected: int) -> tuple[algo.TokenCounts, int]:
        """The normalisers of the policy loss, and the tokens the step trains on (prompts included),
        over the whole batch: one collective."""
        pos, neg, tokens = dist_utils.sum_floats([*batch.token_counts(), float(sum(batch.lengths))])
        return algo.TokenCounts(pos, neg, n_selected, self.cfg.sampling.max_new_tokens), int(tokens)

    def _backward(self, batch: SelectedBatch, counts: algo.TokenCounts,
                  update_actor: bool) -> tuple[dict, torch.Tensor, dict]:
        """The token RM's phase (its BCE, its step, the token weights), then the policy's gradients,
        micro-batch by micro-batch, summed over ranks. Returns the policy's loss sums (over all
        ranks), the token weights the policy loss used [N, T] and the RM's metrics."""
        cfg = self.cfg
        self.phase_seconds = {"rm": 0.0, "policy": 0.0}
        slices = batch.micro_batches(cfg.micro_batch, cfg.micro_batch_tokens)
        # FSDP2: every forward/backward is a collective, so every rank runs as many micro-batches
        # as the busiest one; the extra ones are all-padding rows that add zero to every sum
        n_micro = dist_utils.max_int(len(slices)) if self.fsdp else len(slices)

        def micro(i: int) -> SelectedBatch:
            return batch[slices[i]] if i < len(slices) else SelectedBatch.padding(self.tok.pad_token_id, self.device)

        weights, rm_metrics = torch.ones_like(batch.mask), {}
        if self.rm is not None:
            t0 = self._clock()
            weights, rm_metrics = self._rm_phase(batch, slices, n_micro, micro, counts)
            self.phase_seconds["rm"] = self._clock() - t0
        sums = dict.fromkeys(_POLICY_SUMS, 0.0)
        if update_actor:
            t0 = self._clock()
            self.opt.zero_grad(set_to_none=True)
            for i in range(n_micro):
                mb = micro(i)
                w = weights[slices[i]] if i < len(slices) else torch.ones_like(mb.mask)
                self._policy_backward(mb, w, counts, sums)
            if not self.fsdp:  # FSDP2 already summed them in its reduce-scatter
                dist_utils.all_reduce_grads(self.policy)
            self.phase_seconds["policy"] = self._clock() - t0
        sums = dict(zip(_POLICY_SUMS, dist_utils.sum_floats([sums[k] for k in _POLICY_SUMS])))
        return sums, weights, rm_metrics

    def _rm_phase(self, batch: SelectedBatch, slices: list, n_micro: int, micro, counts: algo.TokenCounts):
        """The token RM's BCE on the outcomes (backward, all micro-batches), its optimiser step, and
        the token weights [N, T] for the policy loss: from the scores before the step (the
        reference's order) or, with `algo.weights_after_rm_step`, from a fresh forward after it."""
        a = self.cfg.algo

        def token_weights(w_logits: torch.Tensor, mb: SelectedBatch) -> torch.Tensor:
            return algo.token_importance_weights(w_logits.detach(), mb.mask, mb.positive, a.tau, a.token_weights,
                                                 a.topk_ratio, a.token_weights_on)

        sums = dict.fromkeys(_RM_SUMS, 0.0)
        weights = torch.ones_like(batch.mask)
        seq_scores = torch.zeros(len(batch.rows))  # the RM's sequence score of every row, before its step
        self.rm_opt.zero_grad(set_to_none=True)
        for i in range(n_micro):
            real = i < len(slices)
            mb = micro(i)
            w_logits = token_scores(self.rm, mb.ids, mb.attn, mb.targets)
            rm_loss = algo.token_rm_sequence_loss(w_logits, mb.mask, mb.reward)
            if not real:  # an all-padding row would otherwise add BCE(0.5, 0) = ln 2
                rm_loss = rm_loss * 0.0
            (rm_loss / counts.seqs).backward()
            sums["rm_loss"] += rm_loss.item()
            sums["rm_correct"] += algo.rm_correct_count(w_logits, mb.mask, mb.positive)
            if real:
                weights[slices[i]] = token_weights(w_logits, mb)
                seq_scores[slices[i]] = algo.masked_mean(w_logits.detach().float(), mb.mask).cpu()
        # a question's rows all live on one rank
        sums["rm_pair_wins"], sums["rm_pairs"] = algo.pair_ranking(
            seq_scores.tolist(), batch.positive.tolist(), [b for b, _ in batch.rows])
        sums = dict(zip(_RM_SUMS, dist_utils.sum_floats([sums[k] for k in _RM_SUMS])))
        if not self.fsdp:
            dist_utils.all_reduce_grads(self.rm)
        m = {"rm_lr": self.rm_sched.get_last_lr()[0]}
        if guarded_step(self.rm, self.rm_opt, self.rm_sched, self.cfg.optim.grad_clip, sums["rm_loss"]):
            m.update(rm_loss=sums["rm_loss"] / counts.seqs, rm_acc=sums["rm_correct"] / counts.seqs,
                     rm_pair_rank=sums["rm_pair_wins"] / sums["rm_pairs"] if sums["rm_pairs"] else None)
            if a.weights_after_rm_step:  # hindsight: the RM has now seen these outcomes
                with torch.no_grad():
                    for i in range(n_micro):
                        mb = micro(i)
                        w_logits = token_scores(self.rm, mb.ids, mb.attn, mb.targets)
                        if i < len(slices):
                            weights[slices[i]] = token_weights(w_logits, mb)
        else:
            m["rm_nonfinite"] = True
        return weights, m

    def _policy_backward(self, mb: SelectedBatch, weights: torch.Tensor, counts: algo.TokenCounts,
                         sums: dict) -> None:
        a = self.cfg.algo
        logits = self.policy(input_ids=mb.ids, attention_mask=mb.attn).logits[:, :-1]
        logp = algo.token_logprobs(logits, mb.targets)
        with torch.no_grad():
            ref_logp = algo.token_logprobs(self._ref_logits(mb.ids, mb.attn), mb.targets)
        sums["entropy"] += (algo.token_entropy(logits) * mb.mask).sum().item()
        out = algo.policy_loss(logp, ref_logp, mb.mask, mb.positive, mb.adv, weights, counts, a)
        out.loss.backward()
        sums["loss_pos"] += out.pos.item()
        sums["loss_neg"] += out.neg.item()
        sums["loss_kl"] += a.kl_coef * out.kl.item()
        sums["kl"] += out.kl_sum.item()

    def _ref_logits(self, ids, attn):
        if self.ref is not None:
            return self.ref(input_ids=ids, attention_mask=attn).logits[:, :-1]
        with self.policy.disable_adapter():
            return self.policy(input_ids=ids, attention_mask=attn).logits[:, :-1]

    def _update(self, sums: dict, counts: algo.TokenCounts, update_actor: bool, rm_metrics: dict) -> dict:
        """The policy's optimiser step (after the freeze; the token RM stepped in `_rm_phase`); a
        non-finite loss or gradient skips that model's step. Returns the step's loss metrics."""
        t0 = self._clock()
        m = {k: v for k, v in rm_metrics.items() if k != "rm_nonfinite"}
        nonfinite = bool(rm_metrics.get("rm_nonfinite"))
        if update_actor:
            total = sums["loss_pos"] + sums["loss_neg"] + sums["loss_kl"]
            if guarded_step(self.policy, self.opt, self.sched, self.cfg.optim.grad_clip, total):
                self.actor_steps += 1
                m.update(loss_pos=sums["loss_pos"], loss_neg=sums["loss_neg"], loss_kl=sums["loss_kl"],
                         loss=total, kl=sums["kl"] / counts.all, entropy=sums["entropy"] / counts.all)
            else:
                nonfinite, update_actor = True, False
        self.nonfinite_streak = self.nonfinite_streak + 1 if nonfinite else 0
        m.update(actor_updated=update_actor, nonfinite=nonfinite, optim_seconds=self._clock() - t0,
                 rm_seconds=self.phase_seconds["rm"], policy_seconds=self.phase_seconds["policy"])
        return m

    def _clock(self) -> float:
        """Wall time after the device has finished its queued work (CUDA runs asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _finish(self, m: dict, t0: float) -> dict:
        m["seconds"] = time.time() - t0
        m["threads"] = torch.get_num_threads()  # the count can change results in the last bits
        m["tokens_per_s"] = m["response_tokens"] / max(m["seconds"], 1e-9)
        for k in METRIC_FIELDS:
            m.setdefault(k, None)
        return m

    def evaluate(self, problems, k: int = 1, sampling: SamplingConfig | None = None, seed: int = evaluation.EVAL_SEED,
                 **kw) -> dict:
        """Under FSDP2 every rank must call this (it gathers the weights); the results agree."""
        with dist_utils.gathered(self.policy):
            return evaluation.evaluate(self.engine, self.tok, problems, self.verifier, k=k,
                            sampling=sampling or self.cfg.sampling, prompt=self.cfg.prompt, seed=seed, **kw)


def train(cfg: TrainConfig, verifier, log=print, trainer: Trainer | None = None) -> tuple[Trainer, list[dict]]:
    """Run to `cfg.steps`, writing config.yaml, metrics.jsonl, trajectories.jsonl, checkpoints/
    and final/ under cfg.out. Raises TrainingError or CheckpointError with a clear message."""
    out = Path(cfg.out)
    root = out / "checkpoints"
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes
    if not main:
        log = lambda *a, **k: None  # noqa: E731
    check_run_dir(cfg)  # before the slow loading: a bad run directory fails in a second
    trainer = trainer or Trainer(cfg, verifier, log)  # data and models load (and fail) before `out` is touched
    eval_set = load_list(cfg.eval_data, data_dir_=cfg.data_dir)[: cfg.eval_limit] if cfg.eval_data and cfg.eval_every else []
    prepare_run_dir(cfg, main)
    path = ckpt.resolve_resume(root, cfg.resume, log) if cfg.resume else None
    if path is not None:
        trainer.load_checkpoint(path)
        log(f"resumed from {path} (step {trainer.step_no})")
    history, dumps = [], None
    if main:
        history = keep_rows(out / "metrics.jsonl", trainer.step_no)
        keep_rows(out / "trajectories.jsonl", trainer.step_no)
        dumps = CappedJsonl(out / "trajectories.jsonl", cfg.dump_max_mb, log)
    trackers = Trackers(cfg.trackers if main else [], out, to_dict(cfg), cfg.wandb_project)
    t_start, first_step = time.time(), trainer.step_no
    trainer.interrupted = None
    # a progress bar on a terminal only (logs and pipes keep just the step lines)
    bar = tqdm(total=cfg.steps, initial=trainer.step_no, desc="train", unit="step", file=sys.stderr,
               disable=not (main and sys.stderr.isatty()), dynamic_ncols=True)
    step_log = log if bar.disable else (lambda text: bar.write(text, file=sys.stderr))
    try:
        with StopOnSignal(log) as stop, open(out / "metrics.jsonl", "a") if main else nullcontext() as mf:
            while trainer.step_no < cfg.steps:
                m = trainer.step()
                step = trainer.step_no
                m["elapsed"] = time.time() - t_start
                m["eta"] = m["elapsed"] / (step - first_step) * (cfg.steps - step)
                new_best = False
                if eval_set and step % cfg.eval_every == 0 and (main or trainer.fsdp):
                    m["eval_pass@1"] = trainer.evaluate(eval_set, k=cfg.eval_k)["pass@1"]
                    if trainer.best is None or m["eval_pass@1"] > trainer.best["eval_pass@1"]:
                        trainer.best, new_best = {"step": step, "eval_pass@1": m["eval_pass@1"]}, True
                history.append(m)
                if main:
                    mf.write(json.dumps(m) + "\n")
                    mf.flush()
                    dumps.write(trainer.trajectories)
                    trackers.log(m, step)
                    if trainer.booster and trainer.booster.history:
                        (out / "skills.json").write_text(json.dumps(trainer.booster.history, indent=1))
                bar.update(1)
                if cfg.log_every and step % cfg.log_every == 0:
                    step_log(format_step(m, cfg.steps))
                # every rank stops together: on a signal anywhere, or rank 0's clock
                stopping = dist_utils.any_flag(stop.signum is not None)
                out_of_time = dist_utils.any_flag(main and bool(cfg.max_seconds) and m["elapsed"] > cfg.max_seconds)
                new_best = dist_utils.any_flag(new_best)
                if (step == cfg.steps or new_best or stopping or out_of_time
                        or (cfg.save_every and step % cfg.save_every == 0)):
                    path = trainer.save_checkpoint(root, cfg.keep_last)
                    if stopping:
                        log(f"checkpoint written: {path}; continue with resume=auto")
                faults.inject("step_end", step)
                if stopping:
                    dist_utils.barrier()
                    trainer.interrupted = signal.Signals(stop.signum or signal.SIGTERM).name
                    return trainer, history
                if out_of_time:
                    log(f"time limit of {cfg.max_seconds:.0f}s reached at step {step}")
                    break
        trainer.save(out / "final")
    except OSError as e:  # metrics, dumps or final weights: a full disk is a message, not a traceback
        raise TrainingError(f"cannot write to run directory {out}: {e}") from None
    finally:
        bar.close()
        trackers.close()
    return trainer, history


__all__ = ["METRIC_FIELDS", "Trainer", "TrainingError", "train"]
