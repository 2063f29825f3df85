"""The memory a run needs on each GPU, by part and by phase, known before anything loads.

`plan_run(cfg, gpus, gpu_memory_gb)` reads the policy's `config.json` (the model is built on the
meta device: shapes, no weights) and the config, and returns a `MemoryPlan`: the bytes of every
part (each model's weights, gradients and optimiser state as sharded; the activations of the
largest micro-batch the config allows, with or without checkpointing; the chunked output layer's
working set; FSDP2's gathered root and its gradient; the engine's weights and KV cache) and the
peak of every phase of a step (load, rollout, credit update, policy update, weight push,
evaluation). `oreal plan` prints it; `oreal train` refuses a config whose plan does not fit, in one
line naming the phase, the part and the setting to change; `micro_batch_tokens=auto` takes the
largest budget that fits.

Activations are measured, not guessed: the trainer's update of one micro-batch (policy forward
with gradients, the reference's forward, backward) runs on copies of the model cut to one and to
two decoder layers, at the policy's widths and a 256-row vocabulary, at three micro-batches, each
in a fresh process (on the run's GPU where there is one, else on CPU); the peak over what the
process held before gives what each layer keeps and what does not grow with the depth
(`activation_model`, `oreal/plan/activations.py`). Everything else
(states, buffers, the output layer's blocks) is counted from shapes.
`benchmarks/memory_plan.py` holds the plan against the peak resident memory of real runs on CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .activations import LIVE_RSS, PROBES, Activations, activation_model, fit_activations  # noqa: F401

GiB = 1024 ** 3
ADAM_STATES = 2  # exp_avg and exp_avg_sq, float32


def dtype_bytes(name: str) -> int:
    return {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}[name]


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a causal LM, from its config alone."""
    params: int  # every parameter (a tied output layer counted once)
    root: int  # parameters outside the decoder layers: embeddings, final norm, output layer (FSDP2's root)
    head: int  # the output layer's own parameters (0 when tied to the embeddings)
    embed: int  # the input embedding's parameters
    largest: int  # the largest single parameter (a weight push copies one at a time)
    layers: int
    hidden: int
    heads: int
    vocab: int
    kv_per_token: int  # KV cache elements per token, all layers (2 x layers x kv heads x head dim)
    linear_in_out: int  # sum of in + out features of the decoder layers' linear layers (LoRA's size per rank)
    max_positions: int
    moe: bool

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        from transformers import AutoModelForCausalLM

        from ..models import decoder_layers

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        layers = decoder_layers(model, required=True)
        in_layers = {id(p) for layer in layers for p in layer.parameters()}
        params = list({id(p): p for p in model.parameters()}.values())
        head = model.get_output_embeddings()
        tied = head is not None and head.weight is model.get_input_embeddings().weight
        text = config.get_text_config(decoder=True)
        heads = text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        lin = sum(m.in_features + m.out_features for layer in layers for m in layer.modules()
                  if isinstance(m, torch.nn.Linear))
        moe = any(getattr(text, k, None) for k in ("num_experts", "num_local_experts", "n_routed_experts"))
        return cls(params=sum(p.numel() for p in params),
                   root=sum(p.numel() for p in params if id(p) not in in_layers),
                   head=0 if tied or head is None else head.weight.numel(),
                   embed=model.get_input_embeddings().weight.numel(),
                   largest=max(p.numel() for p in params), layers=len(layers), hidden=text.hidden_size, heads=heads,
                   vocab=text.vocab_size, kv_per_token=2 * len(layers) * kv_heads * head_dim,
                   linear_in_out=lin, max_positions=getattr(text, "max_position_embeddings", 0) or 0, moe=bool(moe))


@dataclass
class MemoryPlan:
    """Bytes per GPU (or, on CPU, of the process) by part, and the peak of each phase."""
    parts: dict[str, float]
    phases: dict[str, dict[str, float]]  # phase -> the parts it holds at its peak (name -> bytes)
    budget: float  # bytes per GPU (0: none given)
    notes: list[str] = field(default_factory=list)
    tokens: int = 0  # the largest micro-batch's tokens the activations are planned for

    def peak(self, phase: str) -> float:
        return sum(self.phases[phase].values())

    @property
    def worst(self) -> tuple[str, float]:
        phase = max(self.phases, key=self.peak)
        return phase, self.peak(phase)

    def fits(self) -> bool:
        return not self.budget or self.worst[1] <= self.budget

    def refusal(self) -> str | None:
        """One line naming the phase, its largest part and the setting to change; None if it fits."""
        if self.fits():
            return None
        phase, total = self.worst
        part, size = max(self.phases[phase].items(), key=lambda kv: kv[1])
        return (f"the plan needs {total / GiB:.1f} GiB a GPU in the {phase} phase, over the {self.budget / GiB:.1f} GiB "
                f"there are; its largest part is {part} ({size / GiB:.1f} GiB): {_REMEDY.get(part, _REMEDY['default'])} "
                f"(`oreal plan` prints every part)")

    def table(self) -> str:
        lines = ["| part | GiB a GPU |", "|---|---|"]
        lines += [f"| {k} | {v / GiB:.2f} |" for k, v in self.parts.items() if v]
        lines += ["", "| phase | peak, GiB a GPU | largest parts |", "|---|---|---|"]
        for ph in self.phases:
            top = sorted(self.phases[ph].items(), key=lambda kv: -kv[1])[:3]
            lines.append(f"| {ph} | {self.peak(ph) / GiB:.2f} | " + ", ".join(f"{k} {v / GiB:.2f}" for k, v in top if v)
                         + " |")
        phase, total = self.worst
        verdict = (f"peak {total / GiB:.2f} GiB ({phase})" + (f" of {self.budget / GiB:.1f} GiB: "
                   + ("fits" if self.fits() else "DOES NOT FIT") if self.budget else ""))
        return "\n".join(lines + ["", verdict] + self.notes)


_REMEDY = {
    "policy activations": "set micro_batch_tokens (or auto), activation_checkpointing=true, or a smaller micro_batch",
    "credit activations": "set micro_batch_tokens (or auto), activation_checkpointing=true, or a smaller micro_batch",
    "layer working set": "pack=false or attn_implementation=flash_attention_2 where packed rows build an S x S "
                         "mask, else a smaller micro_batch_tokens",
    "policy optimiser": "more GPUs with fsdp=true, cpu_offload=true, or lora.enabled=true",
    "policy weights": "more GPUs with fsdp=true, or cpu_offload=true",
    "engine KV cache": "a smaller vllm.gpu_memory_utilization, or fewer samples per rank",
    "engine weights": "vllm.sleep=true, or more GPUs",
    "default": "more GPUs with fsdp=true, a smaller micro-batch, or activation_checkpointing=true",
}


def _fitted(cfg, shape: ModelShape, prompt_tokens: int):
    """`cfg` with sampling.max_new_tokens=auto resolved for the prompt on the shape's positions (a
    plan made through `plan_config` has it resolved already, from the policy's config)."""
    from ..training.lengths import fitted_to

    return fitted_to(cfg, shape.max_positions or None, prompt_tokens)[0]


def _row_tokens(cfg, prompt_tokens: int) -> int:
    return prompt_tokens + cfg.sampling.max_new_tokens


def micro_batch_tokens(cfg, prompt_tokens: int, packed: bool) -> int:
    """The most tokens one micro-batch can hold under the config (what the activations are planned
    for): `micro_batch` rows of the longest row, or `micro_batch_tokens` where that is smaller (a
    row longer than the budget goes alone)."""
    row = _row_tokens(cfg, prompt_tokens)
    rows = min(cfg.micro_batch, cfg.batch_questions * cfg.samples)
    most = rows * row
    budget = cfg.micro_batch_tokens if isinstance(cfg.micro_batch_tokens, int) else 0
    return max(row, min(most, budget)) if budget else most


def plan_run(cfg, shape: ModelShape, config_json: str, gpus: int = 1, gpu_memory_gb: float = 0.0,
             prompt_tokens: int = 512, packed: bool = False, attn: str | None = None,
             tokens: int | None = None, activations: tuple[float, ...] | None = None) -> MemoryPlan:
    """The plan of a run of `cfg` (a TrainConfig) with a policy of `shape` on `gpus` GPUs of
    `gpu_memory_gb` each (0: no budget to check). `tokens`: the micro-batch's tokens to plan the
    activations for (None: the largest the config allows); `activations`: `activation_model`'s
    coefficients (None: probed)."""
    cfg = _fitted(cfg, shape, prompt_tokens)
    world = max(1, gpus)
    shard = world if cfg.fsdp else 1
    w = dtype_bytes(cfg.dtype)  # weights as stored (float32 masters under mixed precision)
    c = 2 if cfg.mixed_precision else w  # what the models compute in
    gpu = cfg.device.startswith("cuda")
    P = shape.params
    lora = cfg.lora.enabled
    trainable = cfg.lora.r * shape.linear_in_out if lora else P
    parts: dict[str, float] = {}
    parts["policy weights"] = P * w / shard + (trainable * 4 if lora else 0)
    parts["policy gradients"] = trainable * (4 if lora else w) / shard
    parts["policy optimiser"] = ADAM_STATES * 4 * trainable / shard
    parts["reference weights"] = 0 if lora else P * w / shard
    credit_kind = cfg.algo.credit if cfg.algo.uses_credit else None
    credit_params = {None: 0, "token_head": P - shape.head + shape.hidden, "logprob": P, "surprise": P}[credit_kind]
    credit_trains = credit_kind in ("token_head", "logprob")
    parts["credit weights"] = credit_params * w / shard
    parts["credit gradients"] = credit_params * w / shard if credit_trains else 0
    parts["credit optimiser"] = ADAM_STATES * 4 * credit_params / shard if credit_trains else 0
    # AdamW's multi-tensor step takes one float32 temporary of every parameter it updates at once
    # (the square root of the second moment)
    parts["policy step temporary"] = 4 * trainable / shard
    parts["credit step temporary"] = 4 * credit_params / shard if credit_trains else 0

    T = tokens if tokens is not None else micro_batch_tokens(cfg, prompt_tokens, packed)
    ckpt = cfg.activation_checkpointing
    dt = "bfloat16" if c == 2 else "float32"
    # the probe measures the kernels of the device it runs on: a GPU run planned where there is a
    # GPU is probed on it; planned on a CPU, an upper bound where CUDA's attention kernels hold less
    span = T if packed else _row_tokens(cfg, prompt_tokens)  # what one attention call spans
    probe_on = "cuda" if gpu and torch.cuda.is_available() else "cpu"
    act = Activations(*(activations or activation_model(config_json, dt, attn, ckpt, packed, cfg.logprob_chunk,
                                                        probe_on)))
    # what each layer keeps through the forward, and what does not grow with the depth: one
    # layer rebuilt or its gradients in flight, one attention call's mask and scores, the
    # reference's forward, the embeddings' and the final norm's outputs
    parts["policy activations"] = shape.layers * act.layer_bytes(T, span)
    parts["layer working set"] = act.fixed_bytes(T, span)
    parts["credit activations"] = parts["policy activations"] if credit_trains else 0
    chunk = cfg.logprob_chunk
    if chunk:  # chunk tokens by 32,768 output rows: logits, exp, and their gradient block, float32
        # (past the probe's 256 rows, which its measurement holds)
        head_ws = 3 * 4 * chunk * max(0, min(shape.vocab, 32768) - 256)
    else:  # the full [T x V] logits in float32, their log-softmax and gradient
        head_ws = 3 * 4 * T * shape.vocab
    parts["output layer working set"] = head_ws
    # an output layer tied to the embedding gets two whole gradients: the output layer's first
    # (beside every layer's activations: counted in the gradients), held in autograd's input
    # buffer until the embedding's arrives last (the activations freed by then), then their sum,
    # out of place: three copies at the end of the backward (measured on CPU: the 0.5B shape's
    # 1.67 GiB over its resident states, 0.62 of gradients and 2 x 0.51 of embedding; under
    # FSDP2 within the root's gradient below)
    tied = shape.head == 0 and not cfg.fsdp
    # at the activations' peak (the backward's start) the only whole gradient is the output
    # layer's, from the chunked head's backward; the layers' come as their activations go
    parts["output layer gradient"] = (shape.head or shape.embed) * w if not cfg.fsdp and not lora else 0
    credit_out = {"logprob": shape.head or shape.embed, "token_head": shape.hidden}.get(credit_kind, 0)
    parts["credit output layer gradient"] = credit_out * w if not cfg.fsdp else 0
    parts["tied embedding gradient"] = 2 * shape.embed * w if tied and not lora else 0
    parts["credit tied embedding gradient"] = 2 * shape.embed * w if tied and credit_kind == "logprob" else 0
    if cfg.fsdp:  # (one rank too: FSDP2 gathers into buffers of its own) the root's own parameters gathered, and its float32 gradient before the
        # reduce-scatter; a decoder layer gathered at a time, and the next one prefetched
        parts["FSDP root gathered"] = shape.root * c
        parts["FSDP root gradient"] = 2 * shape.root * 4
        parts["FSDP layers gathered"] = 2 * (P - shape.root) / shape.layers * c
    else:
        parts["FSDP root gathered"] = parts["FSDP root gradient"] = parts["FSDP layers gathered"] = 0

    # the engine: vLLM has its own copy (bf16 on a GPU) and takes a share of the GPU for its KV
    # cache; the HF engines sample from the trainer's own weights with a KV cache of their own
    engine = cfg.engine if cfg.engine != "auto" else ("hf_device" if gpu else "hf_sampler")
    rollouts = math.ceil(cfg.batch_questions / world) * cfg.samples
    row = _row_tokens(cfg, prompt_tokens)
    if engine == "vllm":
        ew = P * (2 if gpu else w)
        budget = gpu_memory_gb * GiB
        kv = max(0.0, cfg.vllm.gpu_memory_utilization * budget - ew) if gpu and budget else cfg.vllm.kv_cache_mb * 2**20
        parts["engine weights"], parts["engine KV cache"] = ew, kv
        sleeps = gpu and cfg.vllm.sleep
    else:
        parts["engine weights"] = 0
        parts["engine KV cache"] = rollouts * row * shape.kv_per_token * c
        sleeps = True  # freed after sampling
        if gpu and gpu_memory_gb:  # the HF engines decode as many rows as fit in half of what is free
            held = sum(parts[k] for k in ("policy weights", "policy optimiser", "reference weights",
                                          "credit weights", "credit optimiser"))
            parts["engine KV cache"] = min(parts["engine KV cache"], max(0.0, (gpu_memory_gb * GiB - held) / 2))
    # several optimiser steps a batch (`algo.updates_per_batch` x `algo.mini_batches`): log pi_old and
    # log pi_ref of every token this rank trains are kept, float32, from the batch's first step to its last
    several = cfg.algo.updates_per_batch * cfg.algo.mini_batches > 1
    parts["cached old and reference log-probs"] = 2 * 4 * rollouts * row if several else 0
    resident = ["policy weights", "policy optimiser", "reference weights", "credit weights", "credit optimiser"]
    if not sleeps:
        resident += ["engine weights", "engine KV cache"]

    # a push gathers one FSDP2 unit at a time (the root held throughout), in the compute dtype
    # where the engine keeps that dtype (bf16 under mixed precision on a GPU), and copies out one
    # parameter at a time
    g = c if c == (2 if gpu else w) else w
    push = {"one gathered parameter": shape.largest * g}
    if cfg.fsdp:
        push["push: root gathered"] = shape.root * g
        push["push: a layer gathered"] = (P - shape.root) / shape.layers * g

    def phase(*names):
        keep = dict.fromkeys(resident + list(names))
        return {k: parts[k] for k in keep if parts.get(k)}

    phases = {
        "load": phase(),
        "rollout": phase("engine weights", "engine KV cache"),
        "credit update": phase("credit output layer gradient", "credit activations", "layer working set",
                               "output layer working set", "FSDP root gathered", "FSDP root gradient",
                               "FSDP layers gathered")
        if credit_trains else phase(),
        "policy update": phase("output layer gradient", "policy activations", "layer working set",
                               "output layer working set", "FSDP root gathered",
                               "FSDP root gradient", "FSDP layers gathered", "cached old and reference log-probs"),
        "credit backward's end": phase("credit gradients", "credit tied embedding gradient"),
        "credit step": phase("credit gradients", "credit step temporary") if credit_trains else phase(),
        "policy backward's end": phase("policy gradients", "tied embedding gradient",
                                       "cached old and reference log-probs"),
        "policy step": phase("policy gradients", "policy step temporary", "cached old and reference log-probs"),
        "weight push": {**phase("engine weights"), **push}
        if engine == "vllm" else phase(),
        "evaluation": phase("engine weights", "engine KV cache"),
    }
    notes = []
    if shape.moe:
        notes.append("note: a mixture-of-experts model: the activations are traced with the router on random "
                     "weights; real routing can load experts unevenly")
    if not gpu:
        notes.append("note: device=cpu: the process's own memory (add the Python and library runtime, about "
                     "0.5 GiB, for its resident size)")
    return MemoryPlan(parts, phases, gpu_memory_gb * GiB, notes, T)


def attention_of(cfg, config) -> str:
    """The attention the run's models will use: the config's, else transformers' default (sdpa
    where the architecture has it)."""
    if cfg.attn_implementation not in (None, "auto"):
        return cfg.attn_implementation
    return getattr(config, "_attn_implementation", None) or "sdpa"


def plan_config(cfg, gpus: int = 1, gpu_memory_gb: float = 0.0, problems=None, tokenizer=None,
                config=None, prompt_tokens: int | None = None) -> MemoryPlan:
    """`plan_run` for a TrainConfig as `oreal train` would run it: the policy's config.json (no
    weights), the longest rendered prompt of its data (or `prompt_tokens`: no tokenizer or data
    read), its packing and attention."""
    import json
    from pathlib import Path

    from transformers import AutoConfig

    from ..data import load_list, longest_prompt_tokens
    from ..models import load_tokenizer, resolve_model_path
    from ..training.lengths import engine_window, fitted_to

    if config is None:  # a built model passes its own
        path = resolve_model_path(cfg.policy)
        config = AutoConfig.from_pretrained(path)
        config_json = json.dumps(json.loads(Path(path, "config.json").read_text()))
    else:
        config_json = config.to_json_string(use_diff=False)
    if prompt_tokens is None:
        problems = problems if problems is not None else load_list(cfg.data, data_dir_=cfg.data_dir,
                                                                   preset=cfg.data_preset)
        tok = tokenizer or load_tokenizer(cfg.policy)
        prompt = longest_prompt_tokens([p.prompt for p in problems], tok, cfg.prompt)
    else:
        prompt = prompt_tokens
    cfg, said = fitted_to(cfg, engine_window(cfg, config), prompt)  # max_new_tokens=auto, as the trainer fits it
    attn = attention_of(cfg, config)
    packed = cfg.pack is True or (cfg.pack == "auto" and attn.startswith("flash"))
    shape = ModelShape.from_config(config)
    if cfg.micro_batch_tokens == "auto":
        memory = fit_micro_batch_tokens(cfg, shape, config_json, gpus, gpu_memory_gb, prompt, packed, attn)
    else:
        memory = plan_run(cfg, shape, config_json, gpus, gpu_memory_gb, prompt, packed, attn)
    memory.notes += [f"note: {said}"] if said else []
    return memory


AUTO_SHARE = 0.9  # auto fills at most this share of a GPU: CUDA's context and the allocator's fragmentation


def fit_micro_batch_tokens(cfg, shape, config_json, gpus, gpu_memory_gb, prompt, packed, attn) -> MemoryPlan:
    """The plan at the largest micro-batch (in tokens, a multiple of 256, at least one row) whose
    peak is within `AUTO_SHARE` of the budget; its `tokens` is the budget `micro_batch_tokens=auto`
    takes (one row where only the whole budget holds it). Without a budget (CPU), the whole
    `micro_batch`."""
    cfg = _fitted(cfg, shape, prompt)
    most = micro_batch_tokens(cfg, prompt, packed)
    if not gpu_memory_gb:
        return plan_run(cfg, shape, config_json, gpus, gpu_memory_gb, prompt, packed, attn, tokens=most)
    row = _row_tokens(cfg, prompt)
    lo, hi = row, most
    best = plan_run(cfg, shape, config_json, gpus, gpu_memory_gb, prompt, packed, attn, tokens=lo)
    if not best.fits():
        return best  # not even one row: the refusal names the part

    def roomy(p):
        return p.worst[1] <= AUTO_SHARE * p.budget

    while hi - lo > 256:
        mid = (lo + hi) // 2 // 256 * 256 or lo
        p = plan_run(cfg, shape, config_json, gpus, gpu_memory_gb, prompt, packed, attn, tokens=max(mid, row))
        if roomy(p):
            lo, best = max(mid, row), p
        else:
            hi = mid
    top = plan_run(cfg, shape, config_json, gpus, gpu_memory_gb, prompt, packed, attn, tokens=most)
    return top if roomy(top) else best


def plan_memory(cfg, world: int, problems=None, tokenizer=None, policy_config=None, log=print,
                prompt_tokens: int | None = None) -> tuple[list | None, int]:
    """The trainer's start-up check, before any weights load: on a GPU a config whose plan does not
    fit the device is refused (`ConfigError`, one line naming the phase, the part and the setting
    to change). Returns the problems it read (so the data loads once) and the micro-batch token
    budget (`micro_batch_tokens=auto`: the largest that fits on a GPU; off on CPU, where a budget
    from the free memory would change the batching, and so the last bits, from run to run).
    `prompt_tokens`: the longest prompt, where the caller has measured it (else measured here)."""
    from ..config import ConfigError
    from ..data import load_list
    from ..distributed import local_device
    from ..models import load_tokenizer

    auto = cfg.micro_batch_tokens == "auto"
    if not cfg.device.startswith("cuda"):
        return problems, 0 if auto else cfg.micro_batch_tokens
    gpu_gb = torch.cuda.get_device_properties(torch.device(local_device(cfg.device))).total_memory / GiB
    if problems is None and prompt_tokens is None:
        problems = load_list(cfg.data, data_dir_=cfg.data_dir, preset=cfg.data_preset)
    tok = tokenizer if tokenizer is not None or prompt_tokens is not None else load_tokenizer(cfg.policy)
    memory = plan_config(cfg, world, gpu_gb, problems, tok, policy_config, prompt_tokens)
    refusal = memory.refusal()
    if refusal:
        raise ConfigError(refusal)
    phase, peak = memory.worst
    log(f"memory plan: {peak / GiB:.1f} of {gpu_gb:.1f} GiB a GPU at its peak ({phase}); `oreal plan` prints "
        f"every part" + (f"; micro_batch_tokens=auto: {memory.tokens}" if auto else ""))
    return problems, memory.tokens if auto else cfg.micro_batch_tokens
