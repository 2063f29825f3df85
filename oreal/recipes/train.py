"""The OREAL training loop (Algorithm 1 of the paper) and its baselines, in one readable loop.

Per step: sample B questions, K rollouts each -> verify -> filter by pass rate -> select
(one pair per question, or all) -> advantages -> token-RM forward, BCE update and token
weights -> policy loss (BC on positives, shaped PG on negatives, KL to the reference) ->
gradient clipping and optimiser steps. The math lives in `oreal.algo`; this file composes it.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import algo
from ..config import ConfigError, save_config
from ..data import PromptConfig, load_list
from ..data.sampler import QuestionSampler
from ..evaluation import evaluate, sample_and_grade
from ..models import load_policy, load_token_rm, load_tokenizer, save_model
from ..optim import make_optimizer
from ..rollout import SamplingConfig, make_engine


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
    engine: str = "hf_sampler"
    seed: int = 0
    threads: int = 0
    max_seconds: float = 0.0  # stop after this long (0 = no limit)
    verifier_workers: int = 2
    verifier_timeout: float = 10.0
    log_every: int = 1
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        temperature=1.0, top_p=0.9, max_new_tokens=1024))
    prompt: PromptConfig = field(default_factory=PromptConfig)

    def validate(self):
        for k in ("steps", "batch_questions", "samples", "micro_batch"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k}: must be at least 1")
        if self.samples < 2 and self.algo.advantage == "rloo":
            raise ConfigError("samples: RLOO needs at least 2 samples per question")


METRIC_FIELDS = [
    "step", "reward", "pass_rate", "kept_questions", "selected", "positives", "negatives",
    "kl", "entropy", "loss", "loss_pos", "loss_neg", "loss_kl", "rm_loss", "rm_acc",
    "response_tokens", "unfinished", "verifier_timeouts", "lr", "rm_lr", "actor_updated",
    "skipped", "tokens_per_s", "seconds", "elapsed", "eta",
]


def _batch_tensors(seqs: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded input ids, attention mask and shifted targets with a response mask."""
    L = max(len(p) + len(r) for p, r in seqs)
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


class Trainer:
    """Holds the models, optimisers and sampler; `step()` runs one OREAL step."""

    def __init__(self, cfg: TrainConfig, verifier, log=print):
        self.cfg, self.verifier, self.log = cfg, verifier, log
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.tok = load_tokenizer(cfg.policy)
        self.policy = load_policy(cfg.policy, cfg.dtype, cfg.device)
        self.ref = load_policy(cfg.policy, cfg.dtype, cfg.device).eval().requires_grad_(False)
        a = cfg.algo
        self.use_rm = a.token_weights != "none"
        self.rm = load_token_rm(cfg.token_rm or cfg.policy, cfg.dtype, cfg.device) if self.use_rm else None
        o = cfg.optim
        self.opt, self.sched = make_optimizer(self.policy, o.lr, o.weight_decay, o.warmup,
                                              max(1, cfg.steps - a.actor_freeze_steps), o.min_lr)
        if self.rm is not None:
            self.rm_opt, self.rm_sched = make_optimizer(self.rm, o.rm_lr, o.weight_decay, o.warmup,
                                                        cfg.steps, o.rm_min_lr)
        self.problems = load_list(cfg.data, data_dir_=cfg.data_dir, preset=cfg.data_preset)
        self.sampler = QuestionSampler(len(self.problems), cfg.seed)
        self.engine = make_engine(cfg.engine, self.policy, self.tok)
        self.select_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.step_no = 0
        self.actor_steps = 0

    # -- one step ---------------------------------------------------------------------------
    def step(self) -> dict:
        cfg, a = self.cfg, self.cfg.algo
        t0 = time.time()
        self.step_no += 1
        probs = [self.problems[i] for i in self.sampler.next(cfg.batch_questions)]
        rewards = torch.zeros(len(probs), cfg.samples)
        groups = []
        unfinished = timeouts = 0
        for b, (_, g, verdicts) in enumerate(sample_and_grade(
                self.engine, self.tok, probs, self.verifier, cfg.samples, cfg.sampling, cfg.prompt,
                seed=cfg.seed * 1_000_003 + self.step_no)):
            groups.append(g)
            rewards[b] = torch.tensor([float(v.correct) for v in verdicts])
            unfinished += sum(v.status == "unfinished" for v in verdicts)
            timeouts += sum(v.status == "timeout" for v in verdicts)
        keep = algo.pass_rate_filter(rewards) if a.filter else torch.ones(len(probs), dtype=torch.bool)
        sel = algo.select_pairs(rewards, keep, a.select, self.select_gen)
        adv_all = algo.group_advantages(rewards, a.advantage)
        idx = sel.nonzero().tolist()
        m = {"step": self.step_no, "reward": rewards.mean().item(),
             "pass_rate": rewards.mean(-1).mean().item(), "kept_questions": int(keep.sum()),
             "selected": len(idx), "unfinished": unfinished, "verifier_timeouts": timeouts,
             "response_tokens": sum(len(r.response_ids) for g in groups for r in g)}
        update_actor = self.step_no > a.actor_freeze_steps
        if not idx:
            m.update(skipped=True, actor_updated=False)
            return self._finish(m, t0)
        seqs = [(groups[b][k].prompt_ids, groups[b][k].response_ids) for b, k in idx]
        r = torch.tensor([rewards[b, k].item() for b, k in idx])
        adv = torch.tensor([adv_all[b, k].item() for b, k in idx])
        is_pos = r > 0.5
        ids, attn, targets, mask = _batch_tensors(seqs, self.tok.pad_token_id)
        # global counts: every micro-batch divides by these, so accumulation == one big batch
        pos_mask = mask * is_pos[:, None]
        neg_mask = mask * (~is_pos)[:, None]
        counts = {"pos": pos_mask.sum().item(), "neg": neg_mask.sum().item(), "all": mask.sum().item(),
                  "seqs": len(idx), "const": len(idx) * cfg.sampling.max_new_tokens}
        sums = dict.fromkeys(["loss_pos", "loss_neg", "loss_kl", "kl", "entropy", "rm_loss"], 0.0)
        rm_correct = 0
        if update_actor:
            self.opt.zero_grad(set_to_none=True)
        if self.rm is not None:
            self.rm_opt.zero_grad(set_to_none=True)
        for s in range(0, len(idx), cfg.micro_batch):
            sl = slice(s, s + cfg.micro_batch)
            mb_mask, mb_pos = mask[sl], is_pos[sl]
            weights = torch.ones_like(mb_mask)
            if self.rm is not None:  # token RM: BCE on the outcome, weights for the policy loss
                w_logits = self.rm(input_ids=ids[sl], attention_mask=attn[sl]).logits[:, 1:, 0]
                rm_loss = algo.token_rm_sequence_loss(w_logits, mb_mask, r[sl])
                (rm_loss / counts["seqs"]).backward()
                sums["rm_loss"] += rm_loss.item()
                seq_score = algo.masked_mean(w_logits.detach(), mb_mask)
                rm_correct += ((seq_score > 0) == mb_pos).sum().item()
                weights = algo.token_importance_weights(w_logits.detach(), mb_mask, mb_pos, a.tau,
                                                        a.token_weights, a.topk_ratio)
            if not update_actor:
                continue
            logits = self.policy(input_ids=ids[sl], attention_mask=attn[sl]).logits[:, :-1]
            logp = algo.token_logprobs(logits, targets[sl])
            with torch.no_grad():
                ref_logp = algo.token_logprobs(self.ref(input_ids=ids[sl], attention_mask=attn[sl]).logits[:, :-1],
                                               targets[sl])
                lsm = torch.log_softmax(logits.float(), -1)
                sums["entropy"] += (-(lsm.exp() * lsm).sum(-1) * mb_mask).sum().item()
            kl_tok = algo.kl_penalty(logp, ref_logp, a.kl_kind)
            loss_kl = algo.normalise((kl_tok * mb_mask).sum(), counts["all"])
            mb_adv = adv[sl]
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
        if self.rm is not None:
            torch.nn.utils.clip_grad_norm_(self.rm.parameters(), cfg.optim.grad_clip)
            self.rm_opt.step()
            self.rm_sched.step()
            m["rm_loss"] = sums["rm_loss"] / counts["seqs"]
            m["rm_acc"] = rm_correct / counts["seqs"]
            m["rm_lr"] = self.rm_sched.get_last_lr()[0]
        if update_actor:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.optim.grad_clip)
            self.opt.step()
            self.sched.step()
            self.actor_steps += 1
            m.update(loss_pos=sums["loss_pos"], loss_neg=sums["loss_neg"], loss_kl=sums["loss_kl"],
                     loss=sums["loss_pos"] + sums["loss_neg"] + sums["loss_kl"],
                     kl=sums["kl"] / counts["all"], entropy=sums["entropy"] / counts["all"])
        m.update(positives=int(is_pos.sum()), negatives=int((~is_pos).sum()), skipped=False,
                 actor_updated=update_actor, lr=self.sched.get_last_lr()[0])
        return self._finish(m, t0)

    def _finish(self, m: dict, t0: float) -> dict:
        m["seconds"] = time.time() - t0
        m["tokens_per_s"] = m["response_tokens"] / max(m["seconds"], 1e-9)
        for k in METRIC_FIELDS:
            m.setdefault(k, None)
        return m

    def evaluate(self, problems, k: int = 1, sampling: SamplingConfig | None = None, seed: int = 12345,
                 **kw) -> dict:
        return evaluate(self.engine, self.tok, problems, self.verifier, k=k,
                        sampling=sampling or self.cfg.sampling, prompt=self.cfg.prompt, seed=seed, **kw)

    def save(self, path: Path) -> None:
        save_model(self.policy, self.tok, path / "policy")
        if self.rm is not None:
            save_model(self.rm, self.tok, path / "token_rm")


def format_step(m: dict, total: int) -> str:
    parts = [f"step {m['step']:>4}/{total}", f"reward {m['reward']:.3f}",
             f"kept {m['kept_questions']:>3}", f"sel {m['selected']:>3}"]
    if m.get("loss") is not None:
        parts += [f"loss {m['loss']:+.4f}", f"kl {m['kl']:.4f}", f"ent {m['entropy']:.3f}"]
    if m.get("rm_loss") is not None:
        parts += [f"rm {m['rm_loss']:.3f}/{m['rm_acc']:.2f}"]
    parts += [f"{m['tokens_per_s']:.0f} tok/s", f"{m['seconds']:.1f}s"]
    if m.get("eta") is not None:
        parts.append(f"eta {m['eta']:.0f}s")
    if m.get("eval_pass@1") is not None:
        parts.append(f"eval {m['eval_pass@1']:.3f}")
    return " | ".join(parts)


def train(cfg: TrainConfig, verifier, log=print, trainer: Trainer | None = None) -> tuple[Trainer, list[dict]]:
    """Run `cfg.steps` steps, writing config.yaml, metrics.jsonl and final/ under cfg.out."""
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    except OSError as e:
        raise SystemExit(f"oreal: cannot write to run directory {out}: {e}") from None
    trainer = trainer or Trainer(cfg, verifier, log)
    eval_set = load_list(cfg.eval_data, data_dir_=cfg.data_dir)[: cfg.eval_limit] if cfg.eval_data and cfg.eval_every else []
    history = []
    t_start = time.time()
    with open(out / "metrics.jsonl", "w") as mf:  # no resume yet: a rerun starts the file anew
        while trainer.step_no < cfg.steps:
            m = trainer.step()
            m["elapsed"] = time.time() - t_start
            m["eta"] = m["elapsed"] / len(history + [m]) * (cfg.steps - trainer.step_no)
            if eval_set and trainer.step_no % cfg.eval_every == 0:
                m["eval_pass@1"] = trainer.evaluate(eval_set, k=cfg.eval_k)["pass@1"]
            history.append(m)
            mf.write(json.dumps(m) + "\n")
            mf.flush()
            if cfg.log_every and trainer.step_no % cfg.log_every == 0:
                log(format_step(m, cfg.steps))
            if cfg.max_seconds and m["elapsed"] > cfg.max_seconds:
                log(f"time limit of {cfg.max_seconds:.0f}s reached at step {trainer.step_no}")
                break
    trainer.save(out / "final")
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
    with Verifier(workers=cfg.verifier_workers, timeout=cfg.verifier_timeout) as v:
        train(cfg, v)
    print(f"done: {cfg.out}/final/policy")
    return 0


__all__ = ["ALGORITHMS", "AlgoConfig", "METRIC_FIELDS", "OptimConfig", "TrainConfig", "Trainer",
           "build_config", "train"]
