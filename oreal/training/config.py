"""`oreal train`'s configuration: typed dataclasses read from YAML plus `key=value` overrides.

Defaults are those of the reference 7B run (OREAL.md); `oreal/configs/demo.yaml` rescales them
for the embedded model. The algorithm's own settings (`AlgoConfig`) live in `oreal.algo`.
"""
from __future__ import annotations

import os

from dataclasses import dataclass

import torch

from ..algo import ADVANTAGE_ESTIMATORS, AlgoConfig
from ..config import ConfigError, as_config, checks_keys, coerce_fields, from_values, read_values, setting
from ..data import PromptConfig
from ..rollout import ENGINE_NAMES, SamplingConfig, check_installed, option_sections, resolve_engine
from ..tracking import TRACKERS
from ..verify.adapters import COMBINE, from_settings
from .skills import SkillConfig


@dataclass
class OptimConfig:
    lr: float = setting(5e-7, "policy learning rate at the peak")
    min_lr: float = setting(1e-7, "policy learning rate at the end of the cosine")
    credit_lr: float = setting(2e-6, "credit model learning rate at the peak")
    credit_min_lr: float = setting(4e-7, "credit model learning rate at the end of the cosine")
    warmup: int = setting(10, "linear warm-up steps of both schedules")
    weight_decay: float = setting(0.01, "AdamW weight decay (none on biases and norms)")
    grad_clip: float = setting(1.0, "clip each model's gradient norm at this")
    eps: float = setting(1e-8, "AdamW epsilon")
    betas: list[float] = setting(help="AdamW betas (the reference's)", factory=lambda: [0.9, 0.999])

    def validate(self):
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {self.betas}")


@dataclass
class LoraSettings:
    enabled: bool = setting(False, "train a PEFT LoRA adapter; the reference is the base with it disabled")
    r: int = setting(16, "LoRA rank")
    alpha: int = setting(32, "LoRA alpha")
    dropout: float = setting(0.0, "LoRA dropout")
    target_modules: list[str] = setting(help="modules that get an adapter: names, or [all-linear] for every "
                                        "linear layer but the LM head (any architecture)",
                                        factory=lambda: ["all-linear"])


@dataclass
class RewardConfig:
    """What grades a response: the math verifier (the default), TRL-style reward functions, or
    veRL's compute_score (`oreal.verify.adapters`). OREAL learns from binary outcomes."""
    funcs: list[str] = setting(help="TRL-style reward functions, each path/to/file.py:name or module:name, called "
                                    "as TRL's GRPOTrainer calls them: batched, with prompts, completions, "
                                    "completion_ids, trainer_state and every data column as keyword arguments; "
                                    "a number or None (abstains) a sample (unset, and no verl: the math verifier)",
                               factory=list)
    verl: str | None = setting(None, "veRL's compute_score(data_source, solution_str, ground_truth, extra_info) "
                                     "as path/to/file.py:name: a number, or a dict with a 'score'")
    combine: str = setting("all", "how several funcs make one outcome: all (correct when every function that did "
                                  "not abstain says correct) | any | mean (their weighted mean, then threshold) | "
                                  "sum (TRL's weighted sum, None as 0, then threshold)")
    weights: list[float] = setting(help="one weight per function of funcs for combine=mean|sum, as TRL's "
                                        "reward_weights (unset: 1 each)", factory=list)
    threshold: float | None = setting(None, "a score at or above it is correct: needed where a reward returns other "
                                            "than 0 or 1 (unset: anything but 0/1/True/False stops the run)")

    def __post_init__(self):
        self.validate()

    def validate(self):
        if self.combine not in COMBINE:
            raise ConfigError(f"reward.combine: expected one of {', '.join(COMBINE)}, got {self.combine!r}")
        if self.funcs and self.verl:
            raise ConfigError("reward.funcs and reward.verl both name a reward; set one")
        if self.weights and len(self.weights) != len(self.funcs):
            raise ConfigError(f"reward.weights: {len(self.weights)} weights for {len(self.funcs)} reward.funcs")

    def settings(self) -> dict:
        """What `oreal.verify.as_reward` takes of it for a reward given in Python."""
        return {"threshold": self.threshold, "combine": self.combine, "weights": self.weights or None}

    def build(self):
        """The reward `funcs` or `verl` name, loaded (None: the math verifier)."""
        return from_settings(self.funcs, self.verl, **self.settings())


ENGINE_SECTIONS = option_sections()  # {engine: its settings' dataclass}, from the engine registry
_SECTIONS = {"algo": AlgoConfig, "optim": OptimConfig, "sampling": SamplingConfig, "prompt": PromptConfig,
             "skills": SkillConfig, "lora": LoraSettings, "reward": RewardConfig, **ENGINE_SECTIONS}


def _with_engine_sections(cls):
    """One section per engine with settings of its own (`vllm.*`), read from the engine registry
    (`oreal.rollout.registry.ENGINES`, `options`): a new engine's settings touch no line here.
    Added before `@dataclass` makes the fields, so they are fields like any other section's."""
    for name, options in ENGINE_SECTIONS.items():
        cls.__annotations__[name] = options
        setattr(cls, name, setting(help=f"the {name} engine's own settings (engine={name})", factory=options))
    return cls


@checks_keys
@dataclass
@_with_engine_sections
class TrainConfig:
    """Everything a run needs, validated on construction (from YAML, overrides or Python alike).
    In Python a section may be a mapping and `algo` a preset's name: `TrainConfig(algo="grpo")`."""
    out: str = setting("runs/oreal", "run directory: config, metrics, checkpoints, final weights")
    policy: str = setting("default", "HF causal LM directory, or 'default' (the embedded model)")
    credit_from: str | None = setting(None, "directory of the credit model to start from, e.g. an earlier run's "
                                            "final/credit (unset: built from the policy)")
    dtype: str = setting("float32", "weights' dtype: float32 | bfloat16 | float16")
    device: str = setting("cpu", "cpu | cuda")
    data: str = setting("curriculum_train", "training questions: registry name or path (JSONL, JSON, CSV, "
                                            "Parquet, saved HF dataset)")
    data_preset: str | None = setting(None, "field preset of the data (unset: from the name; a file in TRL's or "
                                            "veRL's RL format is recognised by its first row: trl, verl)")
    data_dir: str | None = setting(None, "where registry benchmarks live (or $OREAL_DATA_DIR)")
    data_balance: bool = setting(False, "repeat questions by pass-rate band as the reference run does "
                                        "(needs pass_rate)")
    eval_data: str | None = setting("curriculum_test", "held-out questions for evaluations")
    eval_limit: int = setting(200, "evaluate on the first N held-out questions")
    eval_every: int = setting(0, "evaluate every N steps (0: only where the caller asks)")
    eval_k: int = setting(1, "samples per held-out question")
    steps: int = setting(90, "training steps")
    batch_questions: int = setting(64, "questions per step (B)")
    samples: int = setting(16, "samples per question (K)")
    micro_batch: int = setting(64, "sequences per forward/backward")
    micro_batch_tokens: int | str = setting("auto", "also cap each micro-batch at this many tokens: their sum when "
                                                    "packed, longest x rows when padded (0: off; auto: on a GPU the "
                                                    "largest that `oreal plan` fits in its memory, on CPU off)")
    pack: bool | str = setting("auto", "the models see each micro-batch's rows packed into one sequence, positions "
                                       "restarting per row: no compute on padding (false: rows padded to the "
                                       "longest; auto: packed where the attention is varlen, flash-attention)")
    fsdp: bool | str = setting("auto", "shard policy, reference and credit model with FSDP2 (torchrun; one GPU works "
                                       "too; auto: on a GPU under torchrun with more than one rank, without LoRA)")
    balance_tokens: bool = setting(True, "torchrun: after selection, move selected rows between ranks so that each "
                                         "trains about the same number of tokens (the same gradient up to float "
                                         "summation order; no effect on one process)")
    mixed_precision: bool | str = setting("auto", "FSDP2: bf16 compute, fp32 master weights and reductions (auto: "
                                                  "with fsdp on a GPU)")
    dist_timeout: float = setting(3600.0, "seconds a rank waits for the others in a collective (NCCL's default "
                                          "600 is shorter than what rank 0 does alone: evaluation, hashing "
                                          "checkpoint shards)")
    cpu_offload: bool = setting(False, "FSDP2: keep sharded parameters and optimiser state in CPU memory")
    activation_checkpointing: bool | str = setting("auto", "recompute activations in backward to save memory "
                                                           "(auto: on a GPU)")
    tf32: bool = setting(True, "CUDA: float32 matrix products in TF32 (PyTorch's default is strict float32, "
                               "several times slower on an A100 or H100); no effect on CPU or under bf16 compute")
    attn_implementation: str = setting("auto", "the attention of the policy, the reference and the credit model "
                                               "alike: auto (transformers' choice, sdpa where it can) | sdpa | eager | "
                                               "flash_attention_2 | flash_attention_3 | ... (pack=auto packs under "
                                               "flash-attention only)")
    logprob_chunk: int = setting(512, "log-probs (policy, reference, log-prob credit) from hidden states, the output "
                                      "layer this many tokens at a time, recomputed in backward: no [tokens x vocab] "
                                      "tensor (0: from the full logits)")
    engine: str = setting("auto", "rollout engine: " + " | ".join(ENGINE_NAMES) + " (auto: hf_sampler on CPU, "
                                  "hf_device on GPU; an engine's own settings: the section of its name, "
                                  + ", ".join(f"{n}.*" for n in ENGINE_SECTIONS) + ")")
    max_staleness: int = setting(0, "rollouts ahead: the batches of the next S steps are sampled by rollout workers "
                                    "(their own processes and weights) while the trainer trains, each from weights at "
                                    "most S steps old, their log-probs the ratio objectives' pi_old (0: sample, then "
                                    "train, in one loop)")
    rollout_workers: int = setting(1, "max_staleness > 0: rollout worker processes, each sampling its share of a batch")
    rollout_threads: int = setting(1, "max_staleness > 0 on CPU: torch threads of each rollout worker")
    rollout_device: str = setting("auto", "max_staleness > 0: where the workers sample (auto: cpu on a CPU run; on a "
                                          "GPU run cuda:N, the GPUs after the trainer's ranks, one a worker)")
    rollout_timeout: float = setting(300.0, "max_staleness > 0: seconds a rollout worker may show no progress "
                                            "before it counts as hung and the workers restart")
    seed: int = setting(0, "seed of the run")
    threads: int = setting(0, "torch threads on CPU (0: the cores free at the start)")
    max_seconds: float = setting(0.0, "stop after this long, with a checkpoint (0: no limit)")
    verifier_workers: int = setting(2, "verifier worker processes")
    verifier_timeout: float = setting(10.0, "seconds per graded answer before its worker is killed")
    log_every: int = setting(1, "print a step line every N steps (0: never)")
    save_every: int = setting(0, "checkpoint every N steps (0: only at the end); also on SIGINT/SIGTERM")
    keep_last: int = setting(2, "checkpoints kept besides the best by evaluation")
    resume: str | None = setting(None, "'auto': newest good checkpoint under out/checkpoints; or a path")
    overwrite: bool = setting(False, "a fresh start may replace an earlier run in `out`")
    max_nonfinite: int = setting(3, "stop after this many steps in a row with a non-finite loss or gradient")
    trackers: list[str] = setting(help="tensorboard, wandb", factory=list)
    wandb_project: str = setting("oreal", "Weights & Biases project")
    dump_per_step: int = setting(8, "responses per step written to trajectories.jsonl (0: none)")
    dump_max_mb: float = setting(20.0, "stop dumping trajectories past this size")
    algo: AlgoConfig = setting(help="the algorithm", factory=AlgoConfig)
    optim: OptimConfig = setting(help="optimisers and schedules", factory=OptimConfig)
    sampling: SamplingConfig = setting(help="rollout sampling (max_new_tokens=auto: what the model's window leaves "
                                            "after the longest training prompt, at most 1024)",
                                       factory=lambda: SamplingConfig(temperature=1.0, top_p=0.9))
    prompt: PromptConfig = setting(help="prompt rendering", factory=PromptConfig)
    reward: RewardConfig = setting(help="what grades a response (default: the math verifier)", factory=RewardConfig)
    skills: SkillConfig = setting(help="skill-based enhancement (off by default)", factory=SkillConfig)
    lora: LoraSettings = setting(help="LoRA", factory=LoraSettings)

    def engine_options(self, name: str | None = None):
        """The settings of engine `name` (default: this run's engine), or None for an engine
        without any."""
        name = resolve_engine(name or self.engine, self.device)
        return getattr(self, name) if name in ENGINE_SECTIONS else None

    def __post_init__(self):
        if isinstance(self.algo, str):  # a preset's name: TrainConfig(algo="grpo")
            self.algo = AlgoConfig(name=self.algo)
        for key, cls in _SECTIONS.items():
            setattr(self, key, as_config(cls, getattr(self, key), key))
        coerce_fields(self)  # the plain keys' types, checked as a YAML file's are
        self._resolve_auto()
        self.validate()

    def _resolve_auto(self) -> None:
        """The memory settings left to `auto`, for this launch: on a GPU, activation checkpointing
        (TRL's and veRL's default) and, under torchrun with more than one rank, FSDP2 with bf16
        compute over float32 masters (a 7B's float32 states alone are 122 GB unsharded); on CPU
        off, as before. `oreal plan --gpus N` plans as a launch of N ranks would resolve them."""
        gpu = self.device.startswith("cuda")
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if self.fsdp == "auto":
            self.fsdp = gpu and world > 1 and not self.lora.enabled
        if self.mixed_precision == "auto":
            self.mixed_precision = self.fsdp is True and gpu
        if self.activation_checkpointing == "auto":
            self.activation_checkpointing = gpu
        for k in ("fsdp", "mixed_precision", "activation_checkpointing"):
            if getattr(self, k) not in (True, False):
                raise ConfigError(f"{k}: expected true, false or auto, got {getattr(self, k)!r}")

    def _check_precision(self) -> None:
        """bf16 or fp16 trainable weights have no float32 master copy here: AdamW's update at the
        reference lr 5e-7 is about 1e-4 of a weight, under bf16's resolution (about 4e-3), so most
        updates would round away without a word. fp16 has no loss scaler."""
        if self.mixed_precision and not self.fsdp:
            raise ConfigError("mixed_precision=true needs fsdp=true (FSDP2 keeps float32 master weights and "
                              "computes in bf16; it runs as one process too)")
        if self.dtype in ("float16", "fp16"):
            raise ConfigError("dtype=float16: oreal has no loss scaler; use dtype=float32 with fsdp=true "
                              "mixed_precision=true (bf16 compute)")
        low = trained_in_low_precision(self)
        if low:
            other = " or lora.enabled=true" if "the policy" in low else " or algo.credit=surprise (float32 a, b)"
            raise ConfigError(f"dtype={self.dtype}: {' and '.join(low)} would train {self.dtype} weights with no "
                              f"float32 master copy (updates under bf16's resolution round away); use dtype=float32 "
                              f"with fsdp=true mixed_precision=true (bf16 compute){other if len(low) == 1 else ''}")

    def validate(self):
        if self.pack not in (True, False, "auto"):
            raise ConfigError(f"pack: expected true, false or auto, got {self.pack!r}")
        if self.micro_batch_tokens != "auto" and (not isinstance(self.micro_batch_tokens, int)
                                                  or self.micro_batch_tokens < 0):
            raise ConfigError(f"micro_batch_tokens: expected a number of tokens >= 0 or auto, got "
                              f"{self.micro_batch_tokens!r}")
        if self.logprob_chunk < 0:
            raise ConfigError("logprob_chunk: must be >= 0 (0: the full logits)")
        for k in ("steps", "batch_questions", "samples", "micro_batch"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k}: must be at least 1")
        resolve_engine(self.engine, self.device)  # an unknown name is a ConfigError naming the choices
        check_installed(self.engine)
        self._check_precision()
        if self.fsdp and self.lora.enabled:
            raise ConfigError("fsdp with lora.enabled is not supported yet: use one or the other")
        need = ADVANTAGE_ESTIMATORS.prop(self.algo.advantage, "min_samples", 1)
        if self.samples < need:
            raise ConfigError(f"samples: {self.algo.advantage.upper()} needs at least {need} samples per question "
                              f"(algo.advantage={self.algo.advantage})")
        for t in self.trackers:
            if t not in TRACKERS:
                raise ConfigError(f"trackers: {t!r} is not one of {list(TRACKERS)}")
        self._check_ahead()

    def _check_ahead(self) -> None:
        """Rollouts ahead (`max_staleness`) and what it cannot be combined with yet."""
        if self.max_staleness < 0:
            raise ConfigError("max_staleness: must be >= 0 (0: sample, then train)")
        if self.rollout_workers < 1 or self.rollout_threads < 1 or self.rollout_timeout <= 0:
            raise ConfigError("rollout_workers and rollout_threads: at least 1; rollout_timeout: above 0")
        if not self.max_staleness:
            return
        if not self.sampling.return_logprobs:
            raise ConfigError("max_staleness > 0 trains on the workers' log-probs of the sampled tokens (pi_old): "
                              "set sampling.return_logprobs=true")
        if self.algo.refill_rounds:
            raise ConfigError("max_staleness > 0 with algo.refill_rounds is not supported yet: a refill decides on "
                              "the step's rewards, which a batch sampled ahead does not have when it is drawn; "
                              "set algo.refill_rounds=0")
        if self.algo.tis_cap:
            raise ConfigError("max_staleness > 0 with algo.tis_cap would weigh the stale tokens twice: pi_old is "
                              "already the rollout worker's log-probs, which the ratio objectives correct for; "
                              "set algo.tis_cap=0")
        if self.batch_questions < self.rollout_workers:
            raise ConfigError(f"batch_questions={self.batch_questions} for {self.rollout_workers} rollout_workers: "
                              f"each worker samples a share of a batch")


def trained_in_low_precision(cfg: "TrainConfig") -> list[str]:
    """The models whose trainable weights would be `cfg.dtype` when that is bf16 or fp16 (a LoRA
    adapter is float32 whatever its base; the `surprise` credit trains only its float32 a, b)."""
    if cfg.dtype in ("float32", "fp32"):
        return []
    out = [] if cfg.lora.enabled else ["the policy"]
    if cfg.algo.uses_credit and cfg.algo.credit != "surprise":
        out.append(f"the credit model ({cfg.algo.credit})")
    return out


def build_config(path: str | None, overrides: list[str] | dict | None) -> TrainConfig:
    """A TrainConfig from a YAML file and overrides; the algorithm preset fills what neither set."""
    return from_values(TrainConfig, read_values(path, overrides, TrainConfig))


def matmul_precision(cfg: TrainConfig) -> str:
    """torch.set_float32_matmul_precision's value for the run: "high" (TF32 on CUDA) with `tf32` on
    a GPU, "highest" (strict float32, PyTorch's default) otherwise: the CPU's results stay bit
    for bit as they were."""
    return "high" if cfg.tf32 and cfg.device.startswith("cuda") else "highest"


def check_environment(cfg: TrainConfig) -> None:
    """What the config asks of this machine, before any work (one line, exit 2 each): the device,
    and the optional packages of the features it turns on (`oreal.preflight.EXTRAS`)."""
    from .. import preflight

    preflight.check_device(cfg.device)
    torch.set_float32_matmul_precision(matmul_precision(cfg))  # CUDA's TF32 switch; no effect on CPU
    for tracker in cfg.trackers:
        preflight.require(tracker)
    if cfg.lora.enabled:
        preflight.require("peft")
    if cfg.skills.enabled and cfg.skills.source == "embedding":
        preflight.require("minilm")
