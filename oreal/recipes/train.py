"""The OREAL training loop (Algorithm 1 of the paper) and its baselines, in one readable loop.

Per step: sample B questions, K rollouts each -> verify -> filter by pass rate -> select
(one pair per question, or all) -> advantages -> token-RM forward, BCE update and token
weights -> policy loss (BC on positives, shaped PG on negatives, KL to the reference) ->
gradient clipping and optimiser steps. The math lives in `oreal.algo`; this file composes it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import algo
from .. import checkpoint as ckpt
from .. import distributed as dist_utils
from ..config import ConfigError, save_config, to_dict
from ..data import PromptConfig, load_list
from ..data.sampler import QuestionSampler
from ..data.skills import SkillBooster, SkillConfig
from ..evaluation import evaluate, sample_and_grade
from ..models import (load_policy, load_token_rm, load_tokenizer, load_weights, read_safetensors,
                      save_model)
from ..optim import make_optimizer
from ..rollout import SamplingConfig, make_engine
from ..tracking import Trackers
from ..verify.verifier import JUDGE_FAILED


@dataclass
class AlgoConfig:
    name: str = "oreal"  # a preset from ALGORITHMS fills the fields below; explicit keys win
    advantage: str = "rloo"  # rloo | grpo | drgrpo | none
    positive_loss: str = "bc"  # bc: behaviour cloning on positives; pg: the same PG term as negatives
    pos_mult_adv: bool = True
    lambda_pos: float = 1.0
    lambda_neg: float = 0.5
    token_weights: str = "threshold"  # none | threshold | topk (needs the token RM)
    tau: float = 0.5
    topk_ratio: float = 0.2
    select: str = "pair"  # pair | all
    filter: bool = True  # drop questions with pass rate 0 or 1
    kl_coef: float = 0.01
    kl_kind: str = "k3"  # k1 | k3 | mse
    loss_norm: str = "tokens"  # tokens: global token counts; constant: sequences x max_new_tokens
    actor_freeze_steps: int = 10

    def validate(self):
        checks = {"advantage": algo.ADVANTAGE_ESTIMATORS, "positive_loss": ("bc", "pg"),
                  "token_weights": ("none", "threshold", "topk"), "select": ("pair", "all"),
                  "kl_kind": algo.KL_ESTIMATORS, "loss_norm": ("tokens", "constant")}
        for key, allowed in checks.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"algo.{key}: {getattr(self, key)!r} is not one of {sorted(allowed)}")
        if self.name not in ALGORITHMS:
            raise ConfigError(f"algo.name: {self.name!r} is not one of {sorted(ALGORITHMS)}")


_PG_ALL = dict(positive_loss="pg", token_weights="none", select="all", pos_mult_adv=False)
# Presets: the paper's ablation ladder and the usual baselines, all in this one loop.
ALGORITHMS: dict[str, dict] = {
    "oreal": {},
    "reinforce": dict(_PG_ALL, advantage="none", filter=False, actor_freeze_steps=0),
    "ladder_shaping": dict(_PG_ALL, advantage="rloo", actor_freeze_steps=0),
    "ladder_bc": dict(advantage="rloo", positive_loss="bc", token_weights="none", select="all",
                      actor_freeze_steps=0),
    "ladder_token": dict(advantage="rloo", positive_loss="bc", token_weights="threshold", select="all"),
    "rloo": dict(_PG_ALL, advantage="rloo", actor_freeze_steps=0),
    "grpo": dict(_PG_ALL, advantage="grpo", actor_freeze_steps=0),
    "drgrpo": dict(_PG_ALL, advantage="drgrpo", loss_norm="constant", actor_freeze_steps=0),
}


def resolve_algo(cfg: AlgoConfig, explicit: set[str]) -> AlgoConfig:
    """Apply the preset named by `cfg.name`, keeping the keys the user set explicitly."""
    preset = {k: v for k, v in ALGORITHMS[cfg.name].items() if k not in explicit}
    return replace(cfg, **preset)


@dataclass
class OptimConfig:
    lr: float = 5e-7
    min_lr: float = 1e-7
    rm_lr: float = 2e-6
    rm_min_lr: float = 4e-7
    warmup: int = 10
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eps: float = 1e-8  # AdamW epsilon


@dataclass
class LoraSettings:
    enabled: bool = False  # train a PEFT LoRA adapter; the reference is the base with it disabled
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])


@dataclass
class TrainConfig:
    out: str = "runs/oreal"
    policy: str = "default"  # HF causal LM directory, or 'default' (the embedded model)
    token_rm: str | None = None  # None: initialise from the policy
    dtype: str = "float32"
    device: str = "cpu"
    data: str = "curriculum_train"  # registry name or path
    data_preset: str | None = None
    data_dir: str | None = None
    eval_data: str | None = "curriculum_test"
    eval_limit: int = 200
    eval_every: int = 0  # 0: only before/after where the caller asks
    eval_k: int = 1
    steps: int = 90
    batch_questions: int = 64  # B
    samples: int = 16  # K
    micro_batch: int = 64  # sequences per forward/backward
    micro_batch_tokens: int = 0  # also cap each micro-batch at this many padded tokens (0: off)
    fsdp: bool = False  # shard policy, reference and token RM with FSDP2 (torchrun; one GPU works too)
    mixed_precision: bool = False  # FSDP2: bf16 compute, fp32 master weights and reductions
    cpu_offload: bool = False  # FSDP2: keep sharded parameters and optimiser state in CPU memory
    activation_checkpointing: bool = False  # recompute activations in backward to save memory
    engine: str = "hf_sampler"
    seed: int = 0
    threads: int = 0
    max_seconds: float = 0.0  # stop after this long (0 = no limit)
    verifier_workers: int = 2
    verifier_timeout: float = 10.0
    log_every: int = 1
    save_every: int = 0  # checkpoint every N steps (0: only at the end); also on SIGINT/SIGTERM
    keep_last: int = 2  # checkpoints kept besides the best by evaluation
    resume: str | None = None  # 'auto': newest good checkpoint under out/checkpoints; or a path
    overwrite: bool = False  # a fresh start may delete the checkpoints of an earlier run in `out`
    max_nonfinite: int = 3  # stop after this many steps in a row with a non-finite loss/gradient
    trackers: list[str] = field(default_factory=list)  # tensorboard, wandb
    wandb_project: str = "oreal"
    dump_per_step: int = 8  # responses per step written to trajectories.jsonl (0: none)
    dump_max_mb: float = 20.0  # stop dumping trajectories past this size
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        temperature=1.0, top_p=0.9, max_new_tokens=1024))
    prompt: PromptConfig = field(default_factory=PromptConfig)
    skills: SkillConfig = field(default_factory=SkillConfig)  # skill-based enhancement (off by default)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def validate(self):
        for k in ("steps", "batch_questions", "samples", "micro_batch"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k}: must be at least 1")
        if self.fsdp and self.lora.enabled:
            raise ConfigError("fsdp with lora.enabled is not supported yet: use one or the other")
        if self.samples < 2 and self.algo.advantage == "rloo":
            raise ConfigError("samples: RLOO needs at least 2 samples per question")
        from ..tracking import TRACKERS

        for t in self.trackers:
            if t not in TRACKERS:
                raise ConfigError(f"trackers: {t!r} is not one of {list(TRACKERS)}")


METRIC_FIELDS = [
    "step", "reward", "pass_rate", "kept_questions", "selected", "positives", "negatives",
    "kl", "entropy", "loss", "loss_pos", "loss_neg", "loss_kl", "rm_loss", "rm_acc",
    "response_tokens", "unfinished", "verifier_timeouts", "judge_failures", "boosted", "lr", "rm_lr",
    "actor_updated", "skipped", "nonfinite", "tokens_per_s", "rollout_seconds", "seconds", "elapsed", "eta",
]


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. non-finite losses step after step)."""


def _micro_batches(lengths: list[int], max_seqs: int, max_tokens: int = 0) -> list[slice]:
    """Consecutive slices of at most `max_seqs` sequences and, when `max_tokens` is set, at most
    that many padded tokens (longest x count): dynamic batching keeps memory flat when response
    lengths vary."""
    out, start, longest = [], 0, 0
    for i, n in enumerate(lengths):
        longest_with = max(longest, n)
        full = i - start >= max_seqs or (max_tokens and i > start and longest_with * (i - start + 1) > max_tokens)
        if full:
            out.append(slice(start, i))
            start, longest_with = i, n
        longest = longest_with
    if start < len(lengths):
        out.append(slice(start, len(lengths)))
    return out


def _batch_tensors(seqs: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded input ids, attention mask and shifted targets with a response mask."""
    L = max((len(p) + len(r) for p, r in seqs), default=1)
    N = len(seqs)
    ids = torch.full((N, L), pad_id, dtype=torch.long)
    attn = torch.zeros((N, L), dtype=torch.long)
    resp = torch.zeros((N, L), dtype=torch.float)
    for i, (p, r) in enumerate(seqs):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        attn[i, :n] = 1
        resp[i, len(p):n] = 1.0
    # position t of the shifted tensors predicts ids[:, t+1]
    return ids, attn, ids[:, 1:], resp[:, 1:]


def _apply_update(model, opt, sched, clip: float, loss_sum: float) -> bool:
    """Clip and step, unless the loss or the gradient is not finite: then drop the gradient and
    leave weights, optimiser state and schedule untouched. Returns whether it stepped."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
    if not (torch.isfinite(torch.as_tensor(loss_sum)) and torch.isfinite(norm)):
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    sched.step()
    return True


class Trainer:
    """Holds the models, optimisers and sampler; `step()` runs one OREAL step."""

    def __init__(self, cfg: TrainConfig, verifier, log=print):
        self.rank, self.world = dist_utils.setup(cfg.device, force=cfg.fsdp)
        self.fsdp = cfg.fsdp
        self.cfg, self.verifier = cfg, verifier
        self.log = log if self.rank == 0 else (lambda *a, **k: None)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.tok = load_tokenizer(cfg.policy)
        self.policy = load_policy(cfg.policy, cfg.dtype, cfg.device)
        if cfg.lora.enabled:  # no second copy: the reference is the base model, adapter disabled
            from peft import LoraConfig, get_peft_model

            lc = cfg.lora
            self.policy = get_peft_model(self.policy, LoraConfig(
                r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules),
                task_type="CAUSAL_LM"))
            self.ref = None
        else:
            self.ref = load_policy(cfg.policy, cfg.dtype, cfg.device).eval().requires_grad_(False)
        a = cfg.algo
        self.use_rm = a.token_weights != "none"
        self.rm = load_token_rm(cfg.token_rm or cfg.policy, cfg.dtype, cfg.device) if self.use_rm else None
        if cfg.activation_checkpointing:
            for m in (self.policy, self.rm):
                if m is not None:
                    m.gradient_checkpointing_enable()
        if cfg.fsdp:  # before the optimisers: fully_shard swaps parameters for sharded DTensors
            for m in (self.policy, self.ref, self.rm):
                if m is not None:
                    dist_utils.fsdp_wrap(m, cfg.mixed_precision, cfg.cpu_offload)
        o = cfg.optim
        self.opt, self.sched = make_optimizer(self.policy, o.lr, o.weight_decay, o.warmup,
                                              max(1, cfg.steps - a.actor_freeze_steps), o.min_lr, o.eps)
        if self.rm is not None:
            self.rm_opt, self.rm_sched = make_optimizer(self.rm, o.rm_lr, o.weight_decay, o.warmup,
                                                        cfg.steps, o.rm_min_lr, o.eps)
        self.problems = load_list(cfg.data, data_dir_=cfg.data_dir, preset=cfg.data_preset)
        self.sampler = QuestionSampler(len(self.problems), cfg.seed)
        self.booster = None
        if cfg.skills.enabled:
            pool = load_list(cfg.skills.pool, data_dir_=cfg.data_dir) if cfg.skills.pool else None
            self.booster = SkillBooster(cfg.skills, self.problems, cfg.seed, pool, log)
        self.engine = make_engine(cfg.engine, self.policy, self.tok)
        self.select_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.step_no = 0
        self.actor_steps = 0
        self.nonfinite_streak = 0
        self.best: dict | None = None  # {"step", "eval_pass@1"} of the best evaluation so far
        self.trajectories: list[dict] = []
        self.interrupted: str | None = None  # the signal's name when a run stopped on one

    # -- one step ---------------------------------------------------------------------------
    def step(self) -> dict:
        """One step of Algorithm 1: draw questions -> rollouts and rewards -> filter, select,
        advantages -> token RM and policy gradients -> optimiser steps. Returns the metrics."""
        cfg, a = self.cfg, self.cfg.algo
        t0 = time.time()
        self.step_no += 1
        self.trajectories = []
        boosted = self.booster.draw(cfg.batch_questions) if self.booster else []
        probs = boosted + [self.problems[i] for i in self.sampler.next(cfg.batch_questions - len(boosted))]
        lo, hi, groups, rewards, stats = self._rollout(probs)
        if self.booster:  # every question counts here, all-wrong ones included
            self.booster.tracker.update([p.id for p in probs], rewards)
            if self.step_no % cfg.skills.mine_every == 0:
                self.booster.mine(self.step_no)
        keep = algo.pass_rate_filter(rewards) if a.filter else torch.ones(len(probs), dtype=torch.bool)
        sel = algo.select_pairs(rewards, keep, a.select, self.select_gen)
        adv_all = algo.group_advantages(rewards, a.advantage)
        idx = sel.nonzero().tolist()
        local_idx = [(b - lo, k) for b, k in idx if lo <= b < hi]
        n_pos = int(sum(rewards[b, k].item() > 0.5 for b, k in idx))
        m = {"step": self.step_no, "reward": rewards.mean().item(),
             "pass_rate": rewards.mean(-1).mean().item(), "kept_questions": int(keep.sum()),
             "selected": len(idx), "boosted": len(boosted), **stats}
        update_actor = self.step_no > a.actor_freeze_steps
        dump = (probs[lo:hi], groups, local_idx, rewards[lo:hi], adv_all[lo:hi])
        if not idx:  # every question all-right or all-wrong: nothing to learn from
            self.log(f"step {self.step_no}: all {len(probs)} questions filtered out "
                     f"(pass rate 0 or 1); update skipped")
            m.update(skipped=True, actor_updated=False, nonfinite=False)
            if cfg.dump_per_step:
                self._record_trajectories(*dump, None)
            return self._finish(m, t0)
        seqs = [(groups[b][k].prompt_ids, groups[b][k].response_ids) for b, k in local_idx]
        r = torch.tensor([rewards[b + lo, k].item() for b, k in local_idx])
        adv = torch.tensor([adv_all[b + lo, k].item() for b, k in local_idx])
        is_pos = r > 0.5
        ids, attn, targets, mask = _batch_tensors(seqs, self.tok.pad_token_id)
        # global counts (over all ranks): every micro-batch divides by these, so accumulation
        # and data parallelism give the update of one big batch
        pos_tok, neg_tok = (mask * is_pos[:, None]).sum().item(), (mask * (~is_pos)[:, None]).sum().item()
        pos_tok, neg_tok = dist_utils.sum_floats([pos_tok, neg_tok])
        counts = {"pos": pos_tok, "neg": neg_tok, "all": pos_tok + neg_tok,
                  "seqs": len(idx), "const": len(idx) * cfg.sampling.max_new_tokens}
        sums, rm_correct, all_weights = self._accumulate_gradients(
            seqs, ids, attn, targets, mask, is_pos, r, adv, counts, update_actor)
        nonfinite = False
        if self.rm is not None:
            m["rm_lr"] = self.rm_sched.get_last_lr()[0]
            if _apply_update(self.rm, self.rm_opt, self.rm_sched, cfg.optim.grad_clip, sums["rm_loss"]):
                m["rm_loss"] = sums["rm_loss"] / counts["seqs"]
                m["rm_acc"] = rm_correct / counts["seqs"]
            else:
                nonfinite = True
        if update_actor:
            total = sums["loss_pos"] + sums["loss_neg"] + sums["loss_kl"]
            if _apply_update(self.policy, self.opt, self.sched, cfg.optim.grad_clip, total):
                self.actor_steps += 1
                m.update(loss_pos=sums["loss_pos"], loss_neg=sums["loss_neg"], loss_kl=sums["loss_kl"],
                         loss=total, kl=sums["kl"] / counts["all"], entropy=sums["entropy"] / counts["all"])
            else:
                nonfinite, update_actor = True, False
        self.nonfinite_streak = self.nonfinite_streak + 1 if nonfinite else 0
        m.update(positives=n_pos, negatives=len(idx) - n_pos, skipped=False,
                 actor_updated=update_actor, nonfinite=nonfinite, lr=self.sched.get_last_lr()[0])
        if cfg.dump_per_step:
            self._record_trajectories(*dump, all_weights)
        if self.nonfinite_streak >= cfg.max_nonfinite:
            raise TrainingError(f"step {self.step_no}: {self.nonfinite_streak} steps in a row had a non-finite "
                                f"loss or gradient (updates skipped); stopping. Lower the learning rate or "
                                f"check the data, then resume from the last checkpoint.")
        return self._finish(m, t0)

    def _ref_logits(self, ids, attn):
        if self.ref is not None:
            return self.ref(input_ids=ids, attention_mask=attn).logits[:, :-1]
        with self.policy.disable_adapter():
            return self.policy(input_ids=ids, attention_mask=attn).logits[:, :-1]

    def _finish(self, m: dict, t0: float) -> dict:
        m["seconds"] = time.time() - t0
        m["tokens_per_s"] = m["response_tokens"] / max(m["seconds"], 1e-9)
        for k in METRIC_FIELDS:
            m.setdefault(k, None)
        return m

    def _rollout(self, probs):
        """Sample K responses for this rank's share of the batch and grade them. Returns
        (lo, hi, local groups, the whole batch's [B, K] rewards, counters)."""
        cfg = self.cfg
        t0 = time.time()
        # data parallel: every rank drew the same batch; it samples and grades its share [lo, hi)
        # with one seed per question, so the rollouts do not depend on how the batch is split
        lo, hi = dist_utils.shard_range(len(probs), self.rank, self.world)
        seeds = [(cfg.seed * 1_000_003 + self.step_no * 10_007 + b) % 2**62 for b in range(len(probs))]
        local_rewards = torch.zeros(hi - lo, cfg.samples)
        groups = []
        unfinished = timeouts = judge_failed = 0
        with dist_utils.gathered(self.policy):  # FSDP2: full weights for the token-by-token loop
            for b, (_, g, verdicts) in enumerate(sample_and_grade(
                    self.engine, self.tok, probs[lo:hi], self.verifier, cfg.samples, cfg.sampling, cfg.prompt,
                    seed=seeds[lo:hi])):
                groups.append(g)
                local_rewards[b] = torch.tensor([float(v.correct) for v in verdicts])
                unfinished += sum(v.status == "unfinished" for v in verdicts)
                timeouts += sum(v.status == "timeout" for v in verdicts)
                judge_failed += sum(v.detail == JUDGE_FAILED for v in verdicts)
        t_rollout = time.time() - t0
        rewards = dist_utils.all_gather_rows(local_rewards)  # [B, K], the whole batch on every rank
        unfinished, timeouts, judge_failed, resp_tokens = dist_utils.sum_floats(
            [unfinished, timeouts, judge_failed, sum(len(r.response_ids) for g in groups for r in g)])
        stats = {"unfinished": int(unfinished), "verifier_timeouts": int(timeouts),
                 "judge_failures": int(judge_failed), "response_tokens": int(resp_tokens),
                 "rollout_seconds": t_rollout}
        return lo, hi, groups, rewards, stats

    def _accumulate_gradients(self, seqs, ids, attn, targets, mask, is_pos, r, adv, counts, update_actor):
        """Token-RM BCE and its token weights, then the policy loss (BC on positives, shaped PG on
        negatives, KL to the reference), micro-batch by micro-batch; gradients are summed over
        ranks. Returns the loss sums, the RM's correct count and the token weights used."""
        cfg, a = self.cfg, self.cfg.algo
        sums = dict.fromkeys(["loss_pos", "loss_neg", "loss_kl", "kl", "entropy", "rm_loss"], 0.0)
        rm_correct = 0
        all_weights = torch.ones_like(mask)
        if update_actor:
            self.opt.zero_grad(set_to_none=True)
        if self.rm is not None:
            self.rm_opt.zero_grad(set_to_none=True)
        slices = _micro_batches([len(p) + len(q) for p, q in seqs], cfg.micro_batch, cfg.micro_batch_tokens)
        # FSDP2: every forward/backward is a collective, so every rank runs as many micro-batches
        # as the busiest one; the extra ones are all-padding rows that add zero to every sum
        n_micro = dist_utils.max_int(len(slices)) if self.fsdp else len(slices)
        pad = self.tok.pad_token_id
        for i in range(n_micro):
            if i < len(slices):
                sl = slices[i]
                mb_ids, mb_attn, mb_tg = ids[sl], attn[sl], targets[sl]
                mb_mask, mb_pos, mb_r, mb_adv = mask[sl], is_pos[sl], r[sl], adv[sl]
            else:
                sl = None
                mb_ids = mb_tg = torch.full((1, 2), pad, dtype=torch.long)
                mb_attn, mb_mask = torch.ones((1, 2), dtype=torch.long), torch.zeros((1, 1))
                mb_tg = mb_tg[:, 1:]
                mb_pos, mb_r, mb_adv = torch.zeros(1, dtype=torch.bool), torch.zeros(1), torch.zeros(1)
            weights = torch.ones_like(mb_mask)
            if self.rm is not None:  # token RM: BCE on the outcome, weights for the policy loss
                w_logits = self.rm(input_ids=mb_ids, attention_mask=mb_attn).logits[:, 1:, 0]
                rm_loss = algo.token_rm_sequence_loss(w_logits, mb_mask, mb_r)
                if sl is None:  # an all-padding row would otherwise add BCE(0.5, 0) = ln 2
                    rm_loss = rm_loss * 0.0
                (rm_loss / counts["seqs"]).backward()
                sums["rm_loss"] += rm_loss.item()
                seq_score = algo.masked_mean(w_logits.detach(), mb_mask)
                rm_correct += (((seq_score > 0) == mb_pos) & (mb_mask.sum(-1) > 0)).sum().item()
                weights = algo.token_importance_weights(w_logits.detach(), mb_mask, mb_pos, a.tau,
                                                        a.token_weights, a.topk_ratio)
                if sl is not None:
                    all_weights[sl] = weights
            if not update_actor:
                continue
            logits = self.policy(input_ids=mb_ids, attention_mask=mb_attn).logits[:, :-1]
            logp = algo.token_logprobs(logits, mb_tg)
            with torch.no_grad():
                ref_logp = algo.token_logprobs(self._ref_logits(mb_ids, mb_attn), mb_tg)
                lsm = torch.log_softmax(logits.float(), -1)
                sums["entropy"] += (-(lsm.exp() * lsm).sum(-1) * mb_mask).sum().item()
            kl_tok = algo.kl_penalty(logp, ref_logp, a.kl_kind)
            loss_kl = algo.normalise((kl_tok * mb_mask).sum(), counts["all"])
            if a.positive_loss == "bc":
                pm, nm = mb_mask * mb_pos[:, None], mb_mask * (~mb_pos)[:, None]
                loss_pos = algo.normalise(algo.positive_bc_loss(logp, pm, weights, mb_adv, a.lambda_pos,
                                                                a.pos_mult_adv), counts["pos"])
                loss_neg = algo.normalise(algo.negative_pg_loss(logp, logp.detach(), nm, weights, mb_adv,
                                                                a.lambda_neg), counts["neg"])
            else:
                denom = counts["const"] if a.loss_norm == "constant" else counts["all"]
                loss_pos = algo.normalise(algo.pg_loss(logp, logp.detach(), mb_mask * mb_pos[:, None],
                                                       mb_adv, weights), denom)
                loss_neg = algo.normalise(algo.pg_loss(logp, logp.detach(), mb_mask * (~mb_pos)[:, None],
                                                       mb_adv, weights), denom)
            loss = loss_pos + loss_neg + a.kl_coef * loss_kl
            loss.backward()
            sums["loss_pos"] += loss_pos.item()
            sums["loss_neg"] += loss_neg.item()
            sums["loss_kl"] += a.kl_coef * loss_kl.item()
            sums["kl"] += (kl_tok.detach() * mb_mask).sum().item()
        keys = ["loss_pos", "loss_neg", "loss_kl", "kl", "entropy", "rm_loss"]
        totals = dist_utils.sum_floats([sums[k] for k in keys] + [rm_correct])
        sums, rm_correct = dict(zip(keys, totals[:-1])), totals[-1]
        if not self.fsdp:  # FSDP2 already summed them in its reduce-scatter
            if update_actor:
                dist_utils.all_reduce_grads(self.policy)
            if self.rm is not None:
                dist_utils.all_reduce_grads(self.rm)
        return sums, rm_correct, all_weights

    def _record_trajectories(self, probs, groups, idx, rewards, adv, weights) -> None:
        """Up to `dump_per_step` responses with their reward, advantage and token weights
        (selected responses first; the weights are those the policy loss used)."""
        row_of = {tuple(bk): i for i, bk in enumerate(idx)}
        order = [tuple(bk) for bk in idx] + [(b, k) for b in range(len(groups)) for k in range(len(groups[b]))
                                             if (b, k) not in row_of]
        for b, k in order[: self.cfg.dump_per_step]:
            r = groups[b][k]
            ids = r.response_ids
            rec = {"step": self.step_no, "id": probs[b].id, "prompt": self.tok.decode(r.prompt_ids),
                   "gold": probs[b].gold, "response": self.tok.decode(ids), "reward": rewards[b, k].item(),
                   "advantage": adv[b, k].item(), "pass_rate": rewards[b].mean().item(),
                   "selected": (b, k) in row_of, "tokens": [self.tok.decode([t]) for t in ids]}
            if weights is not None and (b, k) in row_of:
                start = len(r.prompt_ids) - 1  # shifted targets: position p-1 predicts token p
                rec["weights"] = [round(x, 4) for x in weights[row_of[(b, k)], start:start + len(ids)].tolist()]
            self.trajectories.append(rec)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything but the weights that a resume needs to continue to the bit."""
        return {"step": self.step_no, "actor_steps": self.actor_steps, "nonfinite_streak": self.nonfinite_streak,
                "best": self.best, "opt": dist_utils.optimizer_state(self.policy, self.opt),
                "sched": self.sched.state_dict(),
                "rm_opt": dist_utils.optimizer_state(self.rm, self.rm_opt) if self.rm is not None else None,
                "rm_sched": self.rm_sched.state_dict() if self.rm is not None else None,
                "sampler": self.sampler.state_dict(), "select_gen": self.select_gen.get_state(),
                "booster": self.booster.state_dict() if self.booster else None,
                "rng": ckpt.rng_state()}

    def save_checkpoint(self, root: Path, keep_last: int) -> Path | None:
        """Call on every rank (FSDP2 gathers the shards); rank 0 writes and returns the path."""
        weights, state = self._full_weights(), self.state_dict()
        path = None
        if self.rank == 0:
            def write(d: Path):
                self._write_models(d, weights)
                torch.save(state, d / "trainer_state.pt")

            keep = {self.best["step"]} if self.best else set()
            path = ckpt.save_checkpoint(root, self.step_no, write, {"best": self.best}, keep_last, keep)
        dist_utils.barrier()
        return path

    def load_checkpoint(self, path: Path) -> None:
        st = ckpt.load_trainer_state(path)
        if self.cfg.lora.enabled:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.policy, load_file(str(path / "policy" / "adapter_model.safetensors")))
        else:
            self._load_model(self.policy, path / "policy")
        if self.rm is not None:
            if not (path / "token_rm").is_dir():
                raise ckpt.CheckpointError(f"{path} has no token RM but this config uses one")
            self._load_model(self.rm, path / "token_rm")
            dist_utils.load_optimizer_state(self.rm, self.rm_opt, st["rm_opt"])
            self.rm_sched.load_state_dict(st["rm_sched"])
        dist_utils.load_optimizer_state(self.policy, self.opt, st["opt"])
        self.sched.load_state_dict(st["sched"])
        self.sampler.load_state_dict(st["sampler"])
        self.select_gen.set_state(st["select_gen"])
        if self.booster is not None and st.get("booster"):
            self.booster.load_state_dict(st["booster"])
        ckpt.set_rng_state(st["rng"])
        self.step_no, self.actor_steps = st["step"], st["actor_steps"]
        self.nonfinite_streak, self.best = st["nonfinite_streak"], st["best"]

    def _load_model(self, model, path: Path) -> None:
        if self.fsdp:
            dist_utils.load_full_state_dict(model, read_safetensors(path))
        else:
            load_weights(model, path)

    def evaluate(self, problems, k: int = 1, sampling: SamplingConfig | None = None, seed: int = 12345,
                 **kw) -> dict:
        """Under FSDP2 every rank must call this (it gathers the weights); the results agree."""
        with dist_utils.gathered(self.policy):
            return evaluate(self.engine, self.tok, problems, self.verifier, k=k,
                            sampling=sampling or self.cfg.sampling, prompt=self.cfg.prompt, seed=seed, **kw)

    def _full_weights(self) -> dict:
        """Unsharded weights under FSDP2 (a collective), else None: the models save themselves."""
        if not self.fsdp:
            return {}
        out = {"policy": dist_utils.full_state_dict(self.policy)}
        if self.rm is not None:
            out["token_rm"] = dist_utils.full_state_dict(self.rm)
        return out

    def _write_models(self, path: Path, weights: dict) -> None:
        save_model(self.policy, self.tok, path / "policy", weights.get("policy"))
        if self.rm is not None:
            save_model(self.rm, self.tok, path / "token_rm", weights.get("token_rm"))

    def save(self, path: Path) -> None:
        """Policy and token RM as plain HF directories (every rank calls it; rank 0 writes)."""
        weights = self._full_weights()
        if self.rank == 0:
            self._write_models(path, weights)
        dist_utils.barrier()


def format_step(m: dict, total: int) -> str:
    """One console line per step: what a user watches while a run goes."""
    parts = [f"step {m['step']:>4}/{total}", f"reward {m['reward']:.3f}",
             f"kept {m['kept_questions']:>3}", f"sel {m['selected']:>3} (+{m['positives'] or 0}/-{m['negatives'] or 0})"]
    if m.get("loss") is not None:
        parts += [f"pos {m['loss_pos']:+.4f}", f"neg {m['loss_neg']:+.4f}", f"kl {m['kl']:.4f}",
                  f"ent {m['entropy']:.3f}"]
    if m.get("rm_loss") is not None:
        parts += [f"rm {m['rm_loss']:.3f} acc {m['rm_acc']:.2f}"]
    if m.get("skipped"):
        parts.append("SKIPPED (all filtered)")
    if m.get("nonfinite"):
        parts.append("SKIPPED (non-finite)")
    if m.get("verifier_timeouts"):
        parts.append(f"timeouts {m['verifier_timeouts']}")
    if m.get("judge_failures"):
        parts.append(f"judge failures {m['judge_failures']}")
    parts += [f"{m['tokens_per_s']:.0f} tok/s", f"{m['seconds']:.1f}s"]
    if m.get("eta") is not None:
        parts.append(f"eta {m['eta']:.0f}s")
    if m.get("eval_pass@1") is not None:
        parts.append(f"eval {m['eval_pass@1']:.3f}")
    return " | ".join(parts)


class _StopOnSignal:
    """SIGINT/SIGTERM: finish the current step, write a checkpoint, stop. A second Ctrl-C stops at once."""

    def __init__(self, log):
        self.log, self.signum, self._old = log, None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self.log(f"{signal.Signals(signum).name}: finishing this step, then writing a checkpoint")

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _keep_rows(path: Path, upto: int) -> list[dict]:
    """The JSONL rows of steps <= `upto` (a resume drops what came after its checkpoint); the
    file is rewritten atomically to hold just those."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by the kill
                continue
            if row.get("step", 0) <= upto:
                rows.append(row)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return rows


class _CappedJsonl:
    """Append-only JSONL that stops growing at `max_mb` (trajectory dumps)."""

    def __init__(self, path: Path, max_mb: float, log):
        self.path, self.limit, self.log = path, max_mb * 2**20, log
        self.size = path.stat().st_size if path.exists() else 0
        self.full = False

    def write(self, rows: list[dict]) -> None:
        if self.full or not rows:
            return
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if self.size + len(text) > self.limit:
            self.full = True
            self.log(f"{self.path.name} reached its {self.limit / 2**20:.0f} MB cap; no more trajectory dumps")
            return
        with open(self.path, "a") as f:
            f.write(text)
        self.size += len(text)


def _resume(trainer: Trainer, cfg: TrainConfig, root: Path, log) -> None:
    if cfg.resume == "auto":
        path = ckpt.find_latest(root, log)
        if path is None:
            log(f"resume=auto: no usable checkpoint in {root}; starting from step 0")
            return
    else:
        path = Path(cfg.resume)
        problem = ckpt.validate(path)
        if problem:
            raise ckpt.CheckpointError(f"cannot resume from {path}: {problem}")
    trainer.load_checkpoint(path)
    log(f"resumed from {path} (step {trainer.step_no})")


def train(cfg: TrainConfig, verifier, log=print, trainer: Trainer | None = None) -> tuple[Trainer, list[dict]]:
    """Run to `cfg.steps`, writing config.yaml, metrics.jsonl, trajectories.jsonl, checkpoints/
    and final/ under cfg.out. Raises TrainingError or CheckpointError with a clear message."""
    out = Path(cfg.out)
    root = out / "checkpoints"
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes
    if not main:
        log = lambda *a, **k: None  # noqa: E731
    try:
        if main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
    except OSError as e:
        raise TrainingError(f"cannot write to run directory {out}: {e}") from None
    if not cfg.resume and ckpt.list_checkpoints(root):
        if not cfg.overwrite:
            raise TrainingError(f"{root} holds checkpoints of an earlier run: pass resume=auto to continue "
                                f"it, or overwrite=true to start afresh")
        dist_utils.barrier()
        if main:
            shutil.rmtree(root)
    trainer = trainer or Trainer(cfg, verifier, log)
    if cfg.resume:
        _resume(trainer, cfg, root, log)
    history, dumps = [], None
    if main:
        history = _keep_rows(out / "metrics.jsonl", trainer.step_no)
        _keep_rows(out / "trajectories.jsonl", trainer.step_no)
        dumps = _CappedJsonl(out / "trajectories.jsonl", cfg.dump_max_mb, log)
    eval_set = load_list(cfg.eval_data, data_dir_=cfg.data_dir)[: cfg.eval_limit] if cfg.eval_data and cfg.eval_every else []
    trackers = Trackers(cfg.trackers if main else [], out, to_dict(cfg), cfg.wandb_project)
    t_start, first_step = time.time(), trainer.step_no
    trainer.interrupted = None
    try:
        with _StopOnSignal(log) as stop, open(out / "metrics.jsonl", "a") if main else nullcontext() as mf:
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
                if cfg.log_every and step % cfg.log_every == 0:
                    log(format_step(m, cfg.steps))
                # every rank stops together: on a signal anywhere, or rank 0's clock
                stopping = dist_utils.any_flag(stop.signum is not None)
                out_of_time = dist_utils.any_flag(main and bool(cfg.max_seconds) and m["elapsed"] > cfg.max_seconds)
                new_best = dist_utils.any_flag(new_best)
                if (step == cfg.steps or new_best or stopping or out_of_time
                        or (cfg.save_every and step % cfg.save_every == 0)):
                    path = trainer.save_checkpoint(root, cfg.keep_last)
                    if stopping:
                        log(f"checkpoint written: {path}; continue with resume=auto")
                ckpt._fault("step_end", step)
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
        trackers.close()
    return trainer, history


def build_config(path: str | None, overrides: list[str] | dict | None) -> TrainConfig:
    """Load a TrainConfig, then apply the algorithm preset under the user's explicit keys."""
    from ..config import from_values, read_values

    values = read_values(path, overrides)  # read once: the preset must not override explicit keys
    explicit = set((values.get("algo") or {}).keys()) - {"name"}
    cfg = from_values(TrainConfig, values)
    cfg.algo = resolve_algo(cfg.algo, explicit)
    cfg.validate()
    return cfg


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a policy with OREAL (or a baseline) from a YAML config")
    p.add_argument("config", help="YAML config (see oreal/configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algo.name=grpo steps=10")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    from ..verify import Verifier

    try:
        cfg = build_config(args.config, args.overrides)
    except (ConfigError, OSError) as e:
        print(f"oreal train: {e}", file=sys.stderr)
        return 2
    try:
        with Verifier(workers=cfg.verifier_workers, timeout=cfg.verifier_timeout) as v:
            trainer, _ = train(cfg, v)
    except (TrainingError, ckpt.CheckpointError) as e:
        print(f"oreal train: {e}", file=sys.stderr)
        return 1
    if trainer.interrupted:
        return 128 + getattr(signal, trainer.interrupted)
    print(f"done: {cfg.out}/final/policy")
    return 0


__all__ = ["ALGORITHMS", "AlgoConfig", "LoraSettings", "METRIC_FIELDS", "OptimConfig", "TrainConfig", "Trainer",
           "TrainingError", "build_config", "train"]
