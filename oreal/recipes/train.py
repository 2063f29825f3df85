"""The OREAL training loop (Algorithm 1 of the paper) and its baselines, in one readable loop.

`Trainer.step()` runs one step as named phases: draw B questions -> rollout (K graded samples each; refills) ->
select (`algo.select`: the pass-rate filter, one pair per question or all, advantages) -> rows spread over
ranks by tokens (`training.balance`) -> the padded batch and its micro-batches (`training.batch`) -> credit
(`oreal.training.credit`: the credit model's BCE on the outcomes and its step; the token weights) -> policy
update (`oreal.training.policy`: BC on positives, shaped PG on negatives, KL to the reference; its optimiser
step(s), `algo.updates_per_batch` x `algo.mini_batches`) -> the step's metrics. The math lives in
`oreal.algo`; this file composes it. The models are built once, in a fixed order, by
`oreal.training.models.build_models`.
`train()` runs steps to the end with the step-end callbacks (`oreal.training.callbacks`).
"""
from __future__ import annotations

import time
from contextlib import ExitStack, nullcontext
from functools import partial
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import algo, evaluation, faults
from .. import checkpoint as ckpt
from .. import distributed as dist_utils
from ..config import to_dict
from ..data import Problem, balance, load_list
from ..errors import ConfigError, DataError, TrainingError
from ..plan import plan_memory
from ..rollout import EngineSetup, SamplingConfig, check_length, make_engine, options_class
from ..rollout.weights import full_weights
from ..data.prompts import render
from ..tracking import Trackers
from ..training.balance import rank_rows
from ..training.ahead import Request, RolloutsAhead, worker_spec
from ..training.batch import MicroBatch, RolloutBatch, SelectedBatch, count_tokens, cut_micro_batches
from ..training.callbacks import Callback, PeriodicEval, RunFiles, StopRules, Timing, token_weights_of
from ..training.checkpointing import Checkpointing
from ..training.config import TrainConfig, check_environment
from ..training.credit import CreditStage, no_credit
from ..training.lengths import as_fitted, fit_lengths
from ..training.logprobs import check_forwards, packs
from ..training.model_card import write_model_card
from ..training.models import build_models
from ..training.policy import MiniBatch, PolicyStage
from ..training.refill import Rounds, question_seeds, sample_rounds
from ..training.rundir import StopOnSignal, check_run_dir, keep_rows, prepare_run_dir, trajectory_records
from ..training.sampler import QuestionSampler
from ..training.skills import SkillBooster
from ..training.state import PolicyStats, RunState, StepControl, StepResult
from ..training.threads import auto_threads, usable_cores
from ..verify import as_reward, count_statuses

METRIC_FIELDS = [
    "step", "reward", "pass_rate", "kept_questions", "selected", "positives", "negatives",
    "kl", "entropy", "loss", "loss_pos", "loss_neg", "loss_kl", "credit_loss", "credit_acc", "credit_pair_rank",
    "response_tokens", "unfinished", "verifier_timeouts", "judge_failures", "boosted", "lr", "credit_lr",
    "actor_updated", "policy_steps", "skipped", "nonfinite", "tokens_per_s", "train_tokens", "rollout_seconds",
    # where the step's time went (each phase bracketed by a device synchronize on CUDA)
    "sample_seconds", "grade_seconds", "credit_seconds", "policy_seconds", "optim_seconds",
    "seconds", "elapsed", "eta", "threads",
    # pi_trainer / pi_engine of the sampled tokens in the loss (1 when the engine holds the trainer's weights)
    "engine_ratio_mean", "engine_ratio_max", "engine_ratio_outside",
    # algo.tis_cap: mean of min(pi_trainer / pi_engine, cap) over the loss's tokens, and the share capped;
    # the share of the loss's tokens whose ratio pi / pi_old the objective clipped
    "tis_mean", "tis_capped", "clip_frac",
    "balance_moved_rows", "rank_imbalance_before", "rank_imbalance",  # balance_tokens: rows moved, max/mean tokens
    "refill_rounds", "refill_samples", "refill_seconds",  # algo.refill_rounds: rounds run, responses, time (None: off)
    # max_staleness > 0: steps between the weights that sampled the batch and those it trains, the trainer's
    # wait for the batch, the workers' time sampling it, their restarts during the wait (None: off)
    "staleness", "wait_seconds", "worker_seconds", "worker_restarts",
]


class Trainer(Checkpointing):
    """Holds the models, optimisers and question sampler; `step()` runs one OREAL step.

    `policy` / `tokenizer`: a model and tokenizer already built (else loaded from `cfg.policy`);
    the reference and the credit model start from a copy of it. `problems`: the training questions
    (else loaded from `cfg.data`). `verifier`: anything with `verify_batch` (a `Verifier`), or a reward
    function in any convention `oreal.verify.as_reward` takes. `callbacks`: `oreal.training.callbacks`."""

    def __init__(self, cfg: TrainConfig, verifier, log=print, *, policy=None, tokenizer=None,
                 problems: list[Problem] | None = None, callbacks: list[Callback] | None = None):
        check_environment(cfg)  # the device and the extras the config needs, before anything starts
        self.rank, self.world = dist_utils.setup(cfg.device, force=cfg.fsdp, timeout_s=cfg.dist_timeout)
        if cfg.batch_questions < self.world:  # before any model loads
            raise ConfigError(f"batch_questions={cfg.batch_questions} on {self.world} ranks: each rank samples its share "
                              f"of a step's questions, and a rank without one would miss the collectives of sampling; "
                              f"set batch_questions to at least {self.world}")
        self.fsdp, self.cfg, self.verifier = cfg.fsdp, cfg, as_reward(verifier, **cfg.reward.settings())
        self.callbacks = list(callbacks or [])
        self.log = log if self.rank == 0 else (lambda *a, **k: None)
        if cfg.device == "cpu":  # fixed for the run: a different count can change the last bits
            threads = cfg.threads or auto_threads(reserved=cfg.rollout_workers * cfg.rollout_threads
                                                  if cfg.max_staleness else 0)
            torch.set_num_threads(threads)
            if not cfg.threads:
                self.log(f"torch threads: {threads} of {usable_cores()} cores (the idle ones now; threads=N fixes it)")
        torch.manual_seed(cfg.seed)
        # the prompts against the model's window (max_new_tokens=auto fitted, said once), then the
        # memory plan (on a GPU, refused if it won't fit): both before any weights load
        self.cfg, problems, tokenizer, longest = fit_lengths(cfg, problems, tokenizer, policy, self.log)
        problems, micro_tokens = plan_memory(  # micro_batch_tokens as planned (auto: what fits)
            self.cfg, self.world, problems, tokenizer, None if policy is None else policy.config, self.log, longest)
        self._exit = ExitStack()  # what close() frees: the engine, a temporary copy of a given model
        models = build_models(self.cfg, self._exit, policy, tokenizer)  # in a fixed order: the global RNG
        self.policy, self.ref, self.tok = models.policy, models.ref, models.tokenizer
        self.device, self.policy_dir = models.device, models.policy_dir
        # the two update stages, each with its AdamW, warm-up + cosine (the policy's after the freeze)
        cfg = self.cfg  # as fitted
        self.policy_stage = PolicyStage(self.policy, self.ref, cfg, self.device, self._clock)
        self.credit = None if models.credit is None else CreditStage(models.credit, cfg, self._clock, self.log)
        self.problems = load_questions(cfg, problems, self.log)
        self.sampler = QuestionSampler(len(self.problems), cfg.seed)
        self.booster = build_booster(cfg, self.problems, self.log)
        name = models.engine_name
        self.engine = make_engine(name, self.policy, self.tok, EngineSetup(
            self.policy_dir, getattr(cfg, name) if options_class(name) else None, cfg.dtype, cfg.seed,
            torch.bfloat16 if cfg.mixed_precision else None, self.log, self.device, models.token_logprobs))
        self._exit.callback(self.engine.close)
        check_length(self.engine, longest, self.cfg.sampling.max_new_tokens)  # the engine's own window, any engine
        self.pack = packs(cfg.pack, self.policy)
        # a batch's micro-batches (`cut_micro_batches`); a mini-batch's too (`PolicyStage.mini_batches`)
        self.micro_batches = partial(cut_micro_batches, max_seqs=cfg.micro_batch, max_tokens=micro_tokens,
                                     packed=self.pack, pad_id=self.tok.pad_token_id, device=self.device, fsdp=self.fsdp)
        check_forwards([("the policy", self.policy), ("the reference", self.ref), ("the credit model", models.credit)],
                       min(len(self.tok), self.policy.get_input_embeddings().num_embeddings), self.device,
                       cfg.logprob_chunk, self.pack)  # each model's forwards, before the first rollout
        self.select_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.state = RunState()
        self.ahead, self._changed = None, False  # rollouts ahead (max_staleness); whether this step changed the policy
        if cfg.max_staleness:
            self.ahead = RolloutsAhead(cfg.max_staleness, worker_spec(cfg, self.policy_dir, self.world), cfg.samples,
                                       cfg.sampling, self.rank == 0, self.log)
            self._exit.callback(self.ahead.close)

    def add_callbacks(self, callbacks: list[Callback]) -> None:
        """Join `callbacks` to the trainer's one list (each once); every hook of each is called."""
        self.callbacks += [cb for cb in callbacks if all(cb is not c for c in self.callbacks)]

    def close(self) -> None:
        """Free the engine and any temporary copy of a given model."""
        self._exit.close()

    # -- one step ---------------------------------------------------------------------------
    def step(self) -> StepResult:
        """One step of Algorithm 1: its metrics (every key of METRIC_FIELDS) and trajectories."""
        a = self.cfg.algo
        t0 = time.time()
        if self.ahead and not self.ahead.started:  # the workers start with the first step (after a resume)
            self.start_ahead()
        self.state.step += 1
        step = self.state.step
        if self.ahead:  # sampled by the rollout workers while the steps before trained
            drawn = self.take_ahead(step)
        else:
            drawn = sample_rounds(self.draw, self.rollout, self.cfg.batch_questions, a.refill_rounds)  # DAPO refills
        roll = drawn.batch  # the groups drawn up to the B-th that passes the filter (all, without refills)
        if self.booster:  # every question drawn counts here, all-wrong ones included
            self.booster.observe([q.id for q in drawn.questions], drawn.rewards, step)
        sel = algo.select(roll.rewards, a, self.select_gen, roll.cut)
        m = {"step": step, **drawn.metrics, "kept_questions": int(sel.keep.sum()), "selected": len(sel.rows)}
        if not sel.rows:  # every question all-right or all-wrong: nothing to learn from
            self.log(f"step {step}: all {len(drawn.rewards)} questions filtered out (pass rate 0 or 1); update skipped")
            m.update(skipped=True, actor_updated=False, nonfinite=False)
            return self._finish(m, t0, self._trajectories(roll, [], sel.adv, None))
        roll, rows, balanced = rank_rows(roll, sel.rows, self.rank, self.world if self.cfg.balance_tokens else 1)
        batch = SelectedBatch.build(roll, rows, sel.adv, self.tok.pad_token_id, self.device)
        counts, m["train_tokens"] = count_tokens(batch, len(sel.rows), self.cfg.sampling.max_new_tokens)
        micro = self.micro_batches(batch)
        weights, scores, credit = self.credit.token_credit(batch, micro, counts) if self.credit else no_credit(batch)
        for cb in self.callbacks:
            weights = token_weights_of(cb.on_token_weights(self, batch, roll, weights, scores), weights)
        policy = self.policy_update(micro, weights, counts, update=step > a.actor_freeze_steps, batch=batch)
        nonfinite = not (credit.finite and policy.finite)
        self.state.nonfinite_streak = self.state.nonfinite_streak + 1 if nonfinite else 0
        m.update(credit.metrics(), **policy.metrics(), nonfinite=nonfinite, positives=sel.positives,
                 negatives=len(sel.rows) - sel.positives, skipped=False, lr=self.sched.get_last_lr()[0], **balanced)
        trajectories = self._trajectories(roll, batch.rows, sel.adv, weights)
        if self.state.nonfinite_streak >= self.cfg.max_nonfinite:
            raise TrainingError(f"step {step}: {self.state.nonfinite_streak} steps in a row had a non-finite "
                                f"loss or gradient (updates skipped); stopping. Lower the learning rate or "
                                f"check the data, then resume from the last checkpoint.")
        return self._finish(m, t0, trajectories)

    def draw(self) -> tuple[list[Problem], int]:
        """This step's B questions: the skill booster's share first, then the sampler's."""
        b = self.cfg.batch_questions
        boosted = self.booster.draw(b) if self.booster else []
        return boosted + [self.problems[i] for i in self.sampler.next(b - len(boosted))], len(boosted)

    def rollout(self, questions: list[Problem], refill_round: int = 0, sampled: list | None = None) -> RolloutBatch:
        """Sample K responses for this rank's share of the questions and grade them; the rewards
        of the whole batch are gathered on every rank. `refill_round`: 0, or a refill's (its seeds).
        `sampled`: the whole batch's rollouts, sampled already (by a rollout worker): only graded."""
        cfg = self.cfg
        t0 = time.time()
        # data parallel: every rank drew the same batch; it samples and grades its share [lo, hi)
        # with one seed per question, so the rollouts do not depend on how the batch is split
        lo, hi = dist_utils.shard_range(len(questions), self.rank, self.world)
        seeds = question_seeds(cfg.seed, self.state.step, len(questions), refill_round)
        local = torch.zeros(hi - lo, cfg.samples, 2)  # each response's reward, and whether it was cut
        groups, verdicts, timings = [], [], {}
        if (st := getattr(self.verifier, "trainer_state", None)) is not None:  # TRL-style rewards read the step
            st.global_step, st.max_steps = self.state.step - 1, cfg.steps  # TRL's: optimiser steps done
        if sampled is None:
            self.engine.resume()
            graded = evaluation.sample_and_grade(self.engine, self.tok, questions[lo:hi], self.verifier, cfg.samples,
                                                 cfg.sampling, cfg.prompt, seed=seeds[lo:hi], timings=timings)
        else:
            t1 = time.perf_counter()
            graded = zip(questions[lo:hi], sampled[lo:hi],
                         evaluation.grade(questions[lo:hi], sampled[lo:hi], self.verifier, cfg.samples))
            timings["grade"] = time.perf_counter() - t1
        for b, (_, g, vs) in enumerate(graded):
            groups.append(g)
            local[b] = torch.tensor([[float(v.correct), float(not r.finished)] for v, r in zip(vs, g)])
            verdicts.extend(vs)
        if sampled is None:
            self.engine.release()  # training gets the engine's memory until the next resume()
        t_rollout = time.time() - t0
        rewards, cut = dist_utils.all_gather_rows(local).unbind(-1)  # [B, K] each, the whole batch on every rank
        st = count_statuses(verdicts)
        unfinished, timeouts, judge_failed, resp_tokens = dist_utils.sum_floats(
            [st["unfinished"], st["timeout"], st["judge_failed"], sum(len(r.response_ids) for g in groups for r in g)])
        stats = {"unfinished": int(unfinished), "verifier_timeouts": int(timeouts), "judge_failures": int(judge_failed),
                 "response_tokens": int(resp_tokens), "rollout_seconds": t_rollout,
                 "sample_seconds": timings.get("sample", 0.0), "grade_seconds": timings.get("grade", 0.0)}
        return RolloutBatch(questions, groups, rewards.contiguous(), lo, hi, stats, cut=cut.bool())

    def policy_update(self, micro: list[MicroBatch], weights: torch.Tensor, counts: algo.TokenCounts,
                      update: bool = True, batch: SelectedBatch | None = None) -> PolicyStats:
        """The policy stage on this batch (`oreal.training.policy`): `algo.updates_per_batch` passes
        over its `algo.mini_batches` (one without `batch`), an optimiser step each; `update=False`
        (the actor is frozen) takes none. The engine samples from the new weights afterwards,
        pushed once after the batch's last step."""
        stage = self.policy_stage
        minis = stage.mini_batches(batch, micro, counts, self.micro_batches) if batch is not None and update else [
            MiniBatch(slice(None), micro, counts)]
        stats = stage.update(minis, weights, update)
        self.state.actor_steps += stats.steps
        self._changed = stats.updated  # the rollout workers get the new weights at the step's end
        if stats.updated:
            t0 = self._clock()
            self.push_weights()
            stats.optim_seconds += self._clock() - t0  # as before: the step's optimiser time includes the push
        return stats

    @property
    def opt(self):
        """The policy's optimiser (the policy stage's)."""
        return self.policy_stage.opt

    @property
    def sched(self):
        """The policy's learning-rate schedule (the policy stage's)."""
        return self.policy_stage.sched

    def push_weights(self) -> None:
        """An engine with its own copy of the weights gets the policy's (after a batch's last
        optimiser step and a resume): gathered (in the dtype the engine keeps) and LoRA-merged here, once."""
        if self.engine.holds_weights:
            self.engine.resume()
            with full_weights(self.policy, getattr(self.engine, "weights_dtype", None)) as named:
                self.engine.update_weights(named)

    def _clock(self) -> float:
        """Wall time after the device has finished its queued work (CUDA runs asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _trajectories(self, roll, rows, adv, weights) -> list[dict]:
        return trajectory_records(roll, rows, adv, weights, self.tok, self.state.step, self.cfg.dump_per_step)

    # -- rollouts ahead (max_staleness > 0; `oreal.training.ahead`) ------------------------------
    def take_ahead(self, step: int) -> Rounds:
        """Step `step`'s batch from the rollout workers, graded here."""
        got = self.ahead.take(step)
        r = got.request
        roll = self.rollout(r.questions, sampled=got.groups)
        roll.stats.update(sample_seconds=got.worker_seconds, rollout_seconds=got.wait_seconds + roll.stats["grade_seconds"])
        metrics = {"reward": roll.rewards.mean().item(), "pass_rate": roll.rewards.mean(-1).mean().item(),
                   "boosted": r.boosted, **roll.stats, "refill_rounds": 0, "refill_samples": 0, "refill_seconds": None,
                   "staleness": step - 1 - got.version, "wait_seconds": got.wait_seconds,
                   "worker_seconds": got.worker_seconds, "worker_restarts": got.restarts}
        return Rounds(roll, r.questions, roll.rewards, metrics)

    def start_ahead(self) -> None:
        """Start the workers from the current weights; send them the batches in flight (restored by a
        resume) and draw those of the first S + 1 steps that have none."""
        self.ahead.start()
        with full_weights(self.policy) as named:
            self.ahead.publish(self.state.step, named)
        self.ahead.resubmit()
        for j in range(self.state.step + 1, min(self.state.step + self.cfg.max_staleness + 1, self.cfg.steps) + 1):
            if j not in self.ahead.requests:
                self.submit_ahead(j)

    def submit_ahead(self, step: int) -> None:
        """Draw step `step`'s questions now and have the workers sample them from the newest weights."""
        questions, boosted = self.draw()
        prompts = [render(q.prompt, self.tok, self.cfg.prompt) for q in questions] if self.rank == 0 else []
        self.ahead.submit(Request(step, questions, boosted, prompts, question_seeds(self.cfg.seed, step, len(questions)),
                                  self.ahead.version))

    def publish_ahead(self, step: int) -> None:
        """After step `step`: its weights (or, unchanged, its number) to the workers, then the batch of
        step + S + 1 drawn and submitted, to be sampled from them."""
        with full_weights(self.policy) if self._changed else nullcontext(()) as named:
            self.ahead.publish(step, named, self._changed)
        self._changed = False
        if step + self.cfg.max_staleness + 1 <= self.cfg.steps:
            self.submit_ahead(step + self.cfg.max_staleness + 1)

    def _finish(self, m: dict, t0: float, trajectories: list[dict]) -> StepResult:
        if self.ahead:
            self.publish_ahead(m["step"])
        m["seconds"] = time.time() - t0
        m["threads"] = torch.get_num_threads()  # the count can change results in the last bits
        m["tokens_per_s"] = m["response_tokens"] / max(m["seconds"], 1e-9)
        m.update({k: None for k in METRIC_FIELDS if k not in m})
        return StepResult(m, trajectories)

    def evaluate(self, problems, k: int = 1, sampling: SamplingConfig | None = None, seed: int = evaluation.EVAL_SEED,
                 **kw) -> dict:
        """Every rank must call this (each samples its share); the engine is released after, as a rollout."""
        self.engine.resume()
        try:
            return evaluation.evaluate(self.engine, self.tok, problems, self.verifier, k=k,
                                       sampling=sampling or self.cfg.sampling, prompt=self.cfg.prompt, seed=seed, **kw)
        finally:
            self.engine.release()


def load_questions(cfg: TrainConfig, problems: list[Problem] | None, log) -> list[Problem]:
    """The training questions (`problems`, else `cfg.data`), difficulty-balanced with `data_balance`."""
    problems = list(problems) if problems is not None else load_list(cfg.data, data_dir_=cfg.data_dir,
                                                                     preset=cfg.data_preset)
    if not problems:
        raise DataError("no training questions")
    if cfg.data_balance:  # difficulty balancing: [0,.2) x6, [.2,.4) x4, [.4,.6) x4, [.6,.8) x2, easier dropped
        missing = sum(p.pass_rate is None for p in problems)
        if missing:
            raise DataError(f"data_balance=true: {missing} of {len(problems)} questions in {cfg.data} have "
                            f"no pass_rate; measure them with `oreal data passrate`")
        n = len(problems)
        problems = balance(problems)
        log(f"difficulty balancing: {n} questions -> {len(problems)} entries")
    return problems


def build_booster(cfg: TrainConfig, problems: list[Problem], log) -> SkillBooster | None:
    """The skill booster of `cfg.skills` (None when off)."""
    if not cfg.skills.enabled:
        return None
    pool = load_list(cfg.skills.pool, data_dir_=cfg.data_dir) if cfg.skills.pool else None
    return SkillBooster(cfg.skills, problems, cfg.seed, pool, log)


@dataclass
class TrainResult:
    trainer: Trainer
    history: list[dict]  # every step's metrics, those before a resume included
    interrupted: str | None = None  # the signal's name when the run stopped on one (after a checkpoint)


def train(cfg: TrainConfig, verifier, log=print, trainer: Trainer | None = None,
          callbacks: list[Callback] | None = None, eval_set: list[Problem] | None = None) -> TrainResult:
    """Run to `cfg.steps`, writing config.yaml, metrics.jsonl, trajectories.jsonl, checkpoints/
    and final/ under cfg.out. `callbacks` join the trainer's own (one list: each hook of each
    callback runs, token weights included); their step-end hooks run after the built-in
    evaluation and before the files are written; `eval_set`: the held-out questions of `eval_every` (else from `eval_data`).
    Raises TrainingError or CheckpointError with a clear message."""
    out = Path(cfg.out)
    root = out / "checkpoints"
    check_run_dir(cfg)  # before the slow loading: a bad run directory fails in a second
    if trainer is None:  # data and models load (and fail) before `out` is touched
        trainer = Trainer(cfg, verifier, log, callbacks=callbacks)
    else:
        trainer.add_callbacks(callbacks or [])
    cfg = as_fitted(cfg, trainer.cfg)  # config.yaml records the max_new_tokens auto took
    main = trainer.rank == 0  # under torchrun only rank 0 writes
    log = trainer.log
    if eval_set is None:
        eval_set = load_list(cfg.eval_data, data_dir_=cfg.data_dir)[: cfg.eval_limit] if cfg.eval_data and cfg.eval_every else []
    prepare_run_dir(cfg, main)
    # rank 0 validates (hashes every file of) the checkpoint once; the others wait for its answer
    path = dist_utils.from_rank0(lambda: ckpt.resolve_resume(root, cfg.resume, log)) if cfg.resume else None
    if path is not None:
        trainer.load_checkpoint(path)
        log(f"resumed from {path} (step {trainer.state.step})")
    history = keep_rows(out / "metrics.jsonl", trainer.state.step) if main else []
    if main:
        keep_rows(out / "trajectories.jsonl", trainer.state.step)
    trackers = Trackers(cfg.trackers if main else [], out, to_dict(cfg), cfg.wandb_project)
    files = None
    try:
        with StopOnSignal(log) as signals:
            files = RunFiles(out, cfg, trackers, log, trainer.state.step) if main else None
            step_end = [Timing(cfg.steps, trainer.state.step), PeriodicEval(eval_set, cfg.eval_every, cfg.eval_k),
                        *trainer.callbacks, *([files] if files else []), StopRules(signals, cfg.max_seconds, log)]
            while trainer.state.step < cfg.steps:
                result = trainer.step()
                step, control = trainer.state.step, StepControl()
                for cb in step_end:
                    cb.on_step_end(trainer, result, control)
                history.append(result.metrics)
                if step == cfg.steps or control.save or (cfg.save_every and step % cfg.save_every == 0):
                    path = trainer.save_checkpoint(root, cfg.keep_last)
                    if control.stop:
                        log(f"checkpoint written: {path}; continue with resume=auto")
                faults.inject("step_end", step)
                if control.stop:
                    dist_utils.barrier()
                    return TrainResult(trainer, history, control.stop)
                if control.out_of_time:
                    break
            for cb in step_end:
                cb.on_train_end(trainer, history)
        trainer.save(out / "final")
        if main:  # final/policy as the Hub takes it (`huggingface-cli upload`): a model card beside the weights
            write_model_card(out / "final" / "policy", cfg, history)
    except OSError as e:  # metrics, dumps or final weights: a full disk is a message, not a traceback
        raise TrainingError(f"cannot write to run directory {out}: {e}") from None
    finally:
        if files:
            files.close()
        trackers.close()
    return TrainResult(trainer, history)


__all__ = ["METRIC_FIELDS", "MicroBatch", "TrainResult", "Trainer", "TrainingError", "train"]
