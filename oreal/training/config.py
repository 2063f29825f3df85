"""`oreal train`'s configuration: typed dataclasses read from YAML plus `key=value` overrides.

Defaults are those of the reference 7B run (OREAL.md); `oreal/configs/demo.yaml` rescales them
for the embedded model. The algorithm's own settings (`AlgoConfig`) live in `oreal.algo`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..algo import AlgoConfig, resolve_algo
from ..config import ConfigError, from_values, read_values
from ..data import PromptConfig
from ..rollout import AUTO, ENGINES, SamplingConfig
from ..tracking import TRACKERS
from .skills import SkillConfig


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
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas (the reference's)

    def validate(self):
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {self.betas}")


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
    data_balance: bool = False  # repeat questions by pass-rate band as the reference run does (needs pass_rate)
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
    engine: str = "auto"  # auto: hf_sampler on CPU, hf_device on GPU; or hf_sampler, hf_device, hf_generate
    seed: int = 0
    threads: int = 0  # torch threads on CPU (0: the cores free at the start, see oreal.training.threads)
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
        if self.engine != AUTO and self.engine not in ENGINES:
            raise ConfigError(f"engine: {self.engine!r} is not one of {sorted(ENGINES) + [AUTO]}")
        if self.fsdp and self.lora.enabled:
            raise ConfigError("fsdp with lora.enabled is not supported yet: use one or the other")
        if self.samples < 2 and self.algo.advantage == "rloo":
            raise ConfigError("samples: RLOO needs at least 2 samples per question")
        for t in self.trackers:
            if t not in TRACKERS:
                raise ConfigError(f"trackers: {t!r} is not one of {list(TRACKERS)}")


def build_config(path: str | None, overrides: list[str] | dict | None) -> TrainConfig:
    """Load a TrainConfig, then apply the algorithm preset under the user's explicit keys."""
    values = read_values(path, overrides)  # read once: the preset must not override explicit keys
    explicit = set((values.get("algo") or {}).keys()) - {"name"}
    cfg = from_values(TrainConfig, values)
    cfg.algo = resolve_algo(cfg.algo, explicit)
    cfg.validate()
    return cfg
