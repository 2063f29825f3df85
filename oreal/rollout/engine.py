"""Rollout engines: K sampled responses per prompt.

`RolloutEngine` is the interface the trainer uses. `HFSampler` is a lean sampling loop over
a Hugging Face causal LM with a preallocated KV cache (it drops finished rows as it goes);
`HFGenerateEngine` wraps `model.generate` for comparison and for models whose forward the
lean loop does not cover. Both sample from the live training model (`HFEngine`), so
`update_weights` has nothing to copy; an engine that holds its own weights (vLLM) copies them there.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from .. import distributed as dist_utils
from ..config import setting
from .kv_cache import base_model as _base_model
from .kv_cache import preallocated_cache, sampling_attention
# check_length: re-exported (vllm_engine and older imports take it from here)
from .lengths import AUTO_CAP, check_length, check_max_new_tokens, check_number  # noqa: F401
from .sampling import counter_uniform, row_keys, sample_from_logits


@dataclass
class SamplingConfig:
    temperature: float = setting(1.0, "sampling temperature (0: greedy)")
    top_p: float = setting(1.0, "nucleus sampling: keep the smallest set of tokens with this much mass")
    top_k: int = setting(0, "keep the k most likely tokens (0: off)")
    max_new_tokens: int | str | None = setting("auto", f"response tokens at most; a response cut here is unfinished "
                                                       f"(auto: what the model's window leaves after the longest "
                                                       f"prompt, at most {AUTO_CAP})")
    stop_strings: list[str] = setting(help="strings that end a response besides the stop token", factory=list)
    return_logprobs: bool = setting(True, "keep each sampled token's log-prob")

    def __post_init__(self):
        check_max_new_tokens(self.max_new_tokens)


@dataclass
class Rollout:
    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    response_ids: list[int]  # includes the stop token when finished by one
    text: str  # decoded response without special tokens
    finished: bool  # ended by a stop token or string (not cut at max_new_tokens)
    logprobs: list[float] | None = None  # log pi(y_t) under the model's untempered distribution


@dataclass
class EngineSetup:
    """What an engine may need besides the model and tokenizer (the HF engines need none of it)."""
    model_dir: str | None = None  # the policy's HF directory, for an engine that loads its own copy
    options: object | None = None  # the engine's settings (its registry entry's `options` class)
    dtype: str = "float32"  # the weights' dtype
    seed: int = 0
    compute_dtype: torch.dtype | None = None  # the trainer's compute dtype (bf16 under mixed precision)
    log: Callable = print
    # where the trainer's model computes (None: where its parameters are); FSDP2's cpu_offload keeps
    # the shards in host memory and gathers them onto the GPU for each forward
    device: torch.device | None = None
    # the trainer's log-probs, fn(model, ids, attn, targets) -> (logp [N, L-1], _), for an engine
    # that checks its own against them (vllm); None: from the model's full logits
    token_logprobs: Callable | None = None


class RolloutEngine(Protocol):
    """What the trainer, evaluation and `oreal eval` need of an engine. Built as
    `cls(model, tokenizer, setup)`; registered in `oreal.rollout.registry.ENGINES`.

    A step's calls, in order: `resume()`, `sample(...)`, `release()` (training runs), then, for an
    engine that `holds_weights`, `resume()` and `update_weights(...)` after each optimiser step and
    after a resume from a checkpoint. `close()` at the end."""
    name: str
    holds_weights: bool  # False: samples from the live model the trainer updates (nothing to push)
    max_model_len: int | None  # longest prompt + response it serves (None: no limit); `check_length`
    # the dtype `update_weights` keeps them in (optional; None: their own): FSDP2 may gather in it
    weights_dtype: torch.dtype | None

    def sample(self, prompts: list[str], k: int, cfg: SamplingConfig,
               seed: int | list[int] | None = None) -> list[list[Rollout]]:
        """K rollouts for each prompt, grouped by prompt, in prompt order. A list of seeds (one
        per prompt) makes each prompt's rollouts independent of what else is in the batch, so
        data-parallel ranks that split a batch sample exactly what one process would. A prompt
        that does not fit `max_model_len` with `cfg.max_new_tokens` is a ConfigError."""

    @staticmethod
    def preflight(model_dir: str) -> None:
        """Refuse a model directory the engine cannot serve, before any weights load."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Sample from these weights from now on (plain HF names, full tensors, LoRA merged:
        `oreal.rollout.weights.full_weights`). A no-op where `holds_weights` is False."""

    def release(self) -> None:
        """Give memory back for training until `resume()` (vLLM: sleep)."""

    def resume(self) -> None:
        """Ready to sample and to take weights again."""

    def close(self) -> None:
        """Free what the engine holds."""


def model_max_len(model) -> int | None:
    """The positions the model was built for (`max_position_embeddings`), as vLLM reads it."""
    config = _base_model(model).config.get_text_config(decoder=True)
    return getattr(config, "max_position_embeddings", None)


@contextmanager
def eval_mode(model):
    """The model in eval mode for the block, then every submodule back in the mode it had,
    whatever happens (`train(was_training)` would put a wrapper's eval-mode inner model, a credit
    model's, into train mode: dropout on)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def compute_device(model, setup: EngineSetup | None = None) -> torch.device:
    """Where `model` computes: the trainer's device when the setup says (its parameters may sit in
    host memory under FSDP2's cpu_offload), else its parameters'."""
    if setup is not None and setup.device is not None:
        return torch.device(setup.device)
    return next(model.parameters()).device


def kv_bytes_per_token(model) -> int:
    """The KV cache's bytes per token: keys and values of every layer's KV heads."""
    c = _base_model(model).config.get_text_config(decoder=True)
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * heads * head_dim * next(model.parameters()).element_size()


def device_free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (None elsewhere: the host's rows are bounded by `max_batch`)."""
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None


def rows_that_fit(free_bytes: int | None, kv_bytes: int, tokens_per_row: int, cap: int) -> int:
    """Rows to decode at once: `cap`, or fewer when their KV cache (`tokens_per_row` tokens each)
    would take more than half the free device memory. A fixed 1,024 rows of 16k tokens of a 7B
    model's cache would be about 950 GB."""
    if free_bytes is None:
        return cap
    return max(1, min(cap, free_bytes // 2 // max(1, kv_bytes * tokens_per_row)))


class HFEngine:
    """An engine over the live HF model the trainer updates: nothing to push, nothing to release.
    Each call runs in inference mode, in eval mode, and under FSDP2 on gathered full weights (one
    all-gather per module up front, none inside the token-by-token forwards)."""

    name = "hf"
    holds_weights = False
    weights_dtype = None

    def __init__(self, model, tokenizer, setup: EngineSetup | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = compute_device(model, setup)
        self.max_model_len = model_max_len(model)

    def sample(self, prompts, k, cfg, seed=None):
        check_number(self, cfg.max_new_tokens)  # auto is resolved before an engine samples
        # inference_mode, not no_grad: no version counters or view tracking per op (6% of a demo
        # rollout); entered after FSDP2's gather, whose buffers must stay normal tensors
        with torch.no_grad(), dist_utils.gathered(self.model), eval_mode(self.model), torch.inference_mode():
            return self._sample(prompts, k, cfg, seed)

    def _sample(self, prompts, k, cfg, seed):
        raise NotImplementedError

    @staticmethod
    def preflight(model_dir: str) -> None:
        """Checks of the model directory before any weights load (nothing for the HF engines)."""

    def update_weights(self, named_tensors) -> None:
        pass  # the model it samples from is the one the trainer updates

    def release(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def close(self) -> None:
        pass


class CacheMismatchError(RuntimeError):
    """Cached decoding does not reproduce a full forward pass: sampling would be garbage."""


def cache_argument(model) -> str:
    """The keyword the model's forward takes the KV cache by: `past_key_values` up to
    transformers 5.2x, `cache` in later releases. Asked of the signature, never guessed: an
    unknown keyword would vanish into **kwargs and every decode step would see one token."""
    import inspect

    params = inspect.signature(_base_model(model).forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise TypeError(f"{type(_base_model(model)).__name__}.forward takes neither `cache` nor `past_key_values`; "
                    "the lean sampler needs a KV cache (use engine=hf_generate)")


def _stop_ids(tokenizer, model) -> set[int]:
    ids = set()
    for x in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(x, int):
            ids.add(x)
        elif isinstance(x, (list, tuple)):
            ids.update(int(i) for i in x)
    return ids


def ends_with_stop_string(tokenizer, last_tokens: list[int], stop_strings: list[str]) -> bool:
    """Whether a response's last tokens (up to 16, ending at the token just drawn) hold a stop
    string: the test every HF engine applies after each token."""
    tail = tokenizer.decode(last_tokens, skip_special_tokens=True)
    return any(s in tail for s in stop_strings)


def to_rollouts(tokenizer, prompt_ids: list[list[int]], tokens: torch.Tensor, logps: torch.Tensor,
                lengths: torch.Tensor, finished: torch.Tensor, with_logprobs: bool) -> list[Rollout]:
    """One Rollout per row of a decoded chunk (numbered by row; the caller regroups them): one
    host copy of each tensor, then every row cut at its length."""
    tokens, logps, lengths, finished = tokens.tolist(), logps.tolist(), lengths.tolist(), finished.tolist()
    out = []
    for b, n in enumerate(lengths):
        resp = tokens[b][:n]
        out.append(Rollout(b, 0, prompt_ids[b], resp, tokenizer.decode(resp, skip_special_tokens=True),
                           bool(finished[b]), logps[b][:n] if with_logprobs else None))
    return out


class HFSampler(HFEngine):
    """The lean loop: prefill once, then one cached forward per new token. Keys and values go
    into a preallocated cache with a single-query attention (`oreal.rollout.kv_cache`); each row
    draws from its own counter-based uniforms (`oreal.rollout.sampling`), all rows in one op;
    finished rows leave the batch once `compact_at` of it has finished (until then they ride
    along and their tokens are ignored), so the cache is copied a few times per call, not at
    every token."""

    name = "hf_sampler"
    single_query_attention = True  # kv_cache.decode_attention for decode steps (SDPA's CPU flash kernel is slow there)

    def __init__(self, model, tokenizer, setup: EngineSetup | None = None, max_batch: int = 1024,
                 compact_at: float = 0.25):
        super().__init__(model, tokenizer, setup)
        self.max_batch, self.compact_at = max_batch, compact_at
        self.cache_kw = cache_argument(model)
        self.checked = False  # cached decoding is compared with a full forward on the first call

    def _sample(self, prompts, k, cfg, seed):
        seed = self._prepare(prompts, seed)
        # one key per (question, sample); one seed for the call gives question i the seed + i
        seeds = [int(x) for x in seed] if isinstance(seed, (list, tuple)) else [seed + i for i in range(len(prompts))]
        keys = row_keys(seeds, k, self.device)
        return self._in_chunks(prompts, k, lambda texts, s, chunk: self._sample_chunk(texts, cfg, keys[s:s + len(chunk)]),
                               cfg.max_new_tokens)

    def _prepare(self, prompts, seed):
        """The one-off cache check, and the call's seed: drawn from the global generator when None
        (instead of reseeding it); a list must hold one seed per prompt."""
        if not self.checked:
            self.check_cache(prompts[:2])
        if seed is None:
            seed = int(torch.randint(2**62, (1,)).item())
        if isinstance(seed, (list, tuple)) and len(seed) != len(prompts):
            raise ValueError(f"{len(seed)} seeds for {len(prompts)} prompts")
        return seed

    def _in_chunks(self, prompts, k, decode, max_new_tokens: int) -> list[list[Rollout]]:
        """K rollouts per prompt, decoding at most `max_batch` (prompt, sample) rows at a time, and
        on a GPU no more than half its free memory holds the KV cache of (`rows_that_fit`):
        `decode(texts, start, chunk)` gets the chunk's prompt texts, its offset among all rows and
        its (prompt, sample) pairs, and returns one Rollout per row in order."""
        flat = [(i, j) for i in range(len(prompts)) for j in range(k)]
        out: list[list[Rollout | None]] = [[None] * k for _ in prompts]
        rows, free = self.max_batch, device_free_bytes(self.device)
        if free is not None:  # a GPU: the rows' KV cache must fit (the prompts tokenised only here)
            longest = max((len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts), default=0)
            rows = rows_that_fit(free, kv_bytes_per_token(self.model), longest + max_new_tokens, self.max_batch)
        for s in range(0, len(flat), rows):
            chunk = flat[s:s + rows]
            for r in decode([prompts[i] for i, _ in chunk], s, chunk):
                i, j = chunk[r.prompt_index]
                r.prompt_index, r.sample_index = i, j
                out[i][j] = r
        return out

    def _forward(self, cache=None, **kw):
        """One forward returning (last-position logits, cache)."""
        res = self.model(**kw, **{self.cache_kw: cache}, use_cache=True, logits_to_keep=1)
        new_cache = getattr(res, "cache", None) or getattr(res, "past_key_values", None)
        if new_cache is None:
            raise CacheMismatchError(f"{type(_base_model(self.model)).__name__} returned no KV cache")
        return res.logits[:, -1, :].float(), new_cache

    def _new_cache(self, capacity: int):
        config = _base_model(self.model).config.get_text_config(decoder=True)
        return preallocated_cache(config.num_hidden_layers, capacity)

    @torch.no_grad()
    def check_cache(self, prompts: list[str], steps: int = 4) -> float:
        """Decode a few greedy tokens the way sampling does (left padding, the preallocated cache
        and its attention, a row dropped from the cache half-way) and compare every step's
        log-probs with a full forward of the unpadded sequence. Raises CacheMismatchError when they
        disagree; returns the largest gap."""
        model = self.model
        prompts = (list(prompts) + ["1+1=", "The answer is"])[:2]
        with eval_mode(model), self._attention():
            gap, exact = self._cache_gap(prompts, steps)
        tol = 1e-3 if exact else 0.5  # a cache the model ignores gives gaps of several nats
        if gap > tol:
            import transformers

            raise CacheMismatchError(
                f"cached decoding disagrees with a full forward pass (log-prob gap {gap:.3g} > {tol}) with "
                f"transformers {transformers.__version__} and {type(_base_model(model)).__name__}: sampling "
                f"would be garbage. Use engine=hf_generate, or a transformers version oreal supports.")
        self.checked = True
        return gap

    def _cache_gap(self, prompts: list[str], steps: int) -> tuple[float, bool]:
        """The largest log-prob gap, and whether the full forward ran in float32."""
        model, tok = self.model, self.tokenizer
        device = self.device
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        rows = [r[m.bool()].tolist() for r, m in zip(ids, mask)]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(input_ids=ids, attention_mask=mask, position_ids=pos,
                                      cache=self._new_cache(ids.size(1) + steps))
        live, next_pos, gap, exact = [0, 1], pos[:, -1:] + 1, 0.0, True
        for t in range(steps):
            for b, row in enumerate(live):
                full = model(input_ids=torch.tensor([rows[row]], device=device)).logits[0, -1]
                exact = exact and full.dtype == torch.float32  # bf16 compute (FSDP2 too) rounds more
                gap = max(gap, (logits[b].log_softmax(-1) - full.float().log_softmax(-1)).abs().max().item())
            nxt = logits.argmax(-1)
            for b, row in enumerate(live):
                rows[row].append(int(nxt[b]))
            if t == 1:  # drop the first row, as sampling drops finished rows
                keep = torch.tensor([1], device=device)
                live, nxt, next_pos, mask = [1], nxt[keep], next_pos[keep], mask[keep]
                cache.reorder_cache(keep)
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
            logits, cache = self._forward(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos,
                                          cache=cache)
            next_pos = next_pos + 1
        return gap, exact

    def _sample_chunk(self, texts, cfg: SamplingConfig, keys: torch.Tensor) -> list[Rollout]:
        """`keys`: one counter-RNG key per row (`oreal.rollout.sampling.row_keys`)."""
        with self._attention():
            return self._lean_decode(texts, cfg, keys)

    def _attention(self):
        """The attention sampling runs with (and the cache check checks)."""
        return sampling_attention(self.model) if self.single_query_attention else nullcontext()

    def _prefill(self, texts: list[str], max_new_tokens: int):
        """Prefill each distinct prompt once (K samples share it) and repeat its cache row: returns
        the rows' last logits, the cache (room for `max_new_tokens` more), the rows' left-padded
        attention mask and positions [B, P], and each row's prompt ids."""
        model, tok, device = self.model, self.tokenizer, self.device
        distinct = list(dict.fromkeys(texts))
        enc = tok(distinct, return_tensors="pt", padding=True, add_special_tokens=False)
        where = {text: i for i, text in enumerate(distinct)}
        row_of = torch.tensor([where[text] for text in texts], device=device)
        check_length(self, int(enc["attention_mask"].sum(-1).max()), max_new_tokens)
        distinct_ids = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])]
        ids, attn = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(input_ids=ids, attention_mask=attn, position_ids=pos,
                                      cache=self._new_cache(ids.size(1) + max_new_tokens))
        cache.reorder_cache(row_of)
        return logits[row_of], cache, attn[row_of], pos[row_of], [distinct_ids[where[text]] for text in texts]

    def _lean_decode(self, texts, cfg: SamplingConfig, keys: torch.Tensor) -> list[Rollout]:
        model, tok = self.model, self.tokenizer
        device = keys.device
        B, T = len(texts), cfg.max_new_tokens
        logits, cache, attn, pos, prompt_ids = self._prefill(texts, T)
        P = attn.size(1)
        stop = torch.tensor(sorted(_stop_ids(tok, model)), device=device)
        # the attention mask of the whole sequence up front: left padding, then every new token
        mask = torch.ones((B, P + T), dtype=torch.long, device=device)
        mask[:, :P] = attn
        live = torch.arange(B, device=device)  # original row of each batch row
        active = torch.ones(B, dtype=torch.bool, device=device)  # batch rows still decoding
        tokens = torch.full((B, T), -1, dtype=torch.long, device=device)
        logps = torch.zeros((B, T), device=device)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        next_pos = pos[:, -1:] + 1
        for t in range(T):
            # a finished row's draws land past its length and are never read
            nxt = sample_from_logits(logits, counter_uniform(keys[live], t), cfg)
            tokens[live, t] = nxt
            if cfg.return_logprobs:
                logps[live, t] = logits.log_softmax(-1).gather(-1, nxt[:, None]).squeeze(-1)
            lengths[live] += active.long()
            done = active & torch.isin(nxt, stop)
            if cfg.stop_strings:
                for b in active.nonzero().flatten().tolist():
                    row = int(live[b])
                    if ends_with_stop_string(tok, tokens[row, max(0, t - 15):t + 1].tolist(), cfg.stop_strings):
                        done[b] = True
            finished[live[done]] = True
            active &= ~done
            n_active = int(active.sum())
            if n_active == 0 or t == T - 1:
                break
            finished_rows = len(live) - n_active
            if finished_rows and finished_rows >= self.compact_at * len(live):  # drop them from batch and cache
                keep = active.nonzero().flatten()
                live, nxt, next_pos, mask, active = live[keep], nxt[keep], next_pos[keep], mask[keep], active[keep]
                cache.reorder_cache(keep)
            logits, cache = self._forward(input_ids=nxt[:, None], attention_mask=mask[:, :P + t + 1],
                                          position_ids=next_pos, cache=cache)
            next_pos = next_pos + 1
        return to_rollouts(tok, prompt_ids, tokens, logps, lengths, finished, cfg.return_logprobs)


class HFGenerateEngine(HFEngine):
    """`model.generate` with the same interface (the baseline the lean loop is measured against)."""

    name = "hf_generate"

    def _sample(self, prompts, k, cfg, seed):
        if isinstance(seed, (list, tuple)):  # per-prompt seeds: one generate call per prompt
            return [self._generate(prompts[i:i + 1], k, cfg, int(seed[i]))[0] for i in range(len(prompts))]
        return self._generate(prompts, k, cfg, seed)

    def _generate(self, prompts, k, cfg, seed):
        model, tok = self.model, self.tokenizer
        # each prompt repeated k times in a row (greedy decoding rejects num_return_sequences)
        enc = tok([p for p in prompts for _ in range(k)], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        check_length(self, int(enc["attention_mask"].sum(-1).max()), cfg.max_new_tokens)
        stop = sorted(_stop_ids(tok, model))
        kwargs = dict(max_new_tokens=cfg.max_new_tokens,
                      eos_token_id=stop, pad_token_id=tok.pad_token_id,
                      return_dict_in_generate=True, output_logits=cfg.return_logprobs)
        if cfg.temperature == 0:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k or None)
        if cfg.stop_strings:
            kwargs.update(stop_strings=cfg.stop_strings, tokenizer=tok)
        dev = self.device
        with torch.random.fork_rng():  # generate draws from the global RNG: seed a private copy
            if seed is not None:
                torch.manual_seed(seed)
            res = model.generate(input_ids=enc["input_ids"].to(dev),
                                 attention_mask=enc["attention_mask"].to(dev), **kwargs)
        gen_ids = res.sequences[:, enc["input_ids"].size(1):]
        logits = torch.stack(res.logits, 1).float() if cfg.return_logprobs else None
        out = []
        for i in range(len(prompts)):
            pids = enc["input_ids"][i * k][enc["attention_mask"][i * k].bool()].tolist()
            group = []
            for j in range(k):
                row = i * k + j
                ids = gen_ids[row].tolist()
                n, fin = len(ids), False
                for t, x in enumerate(ids):
                    if x in stop:
                        n, fin = t + 1, True
                        break
                ids = ids[:n]
                text = tok.decode(ids, skip_special_tokens=True)
                if not fin and cfg.stop_strings and any(s in text for s in cfg.stop_strings):
                    fin = True
                lp = None
                if logits is not None:
                    lp = logits[row, :n].log_softmax(-1).gather(-1, gen_ids[row, :n, None]).squeeze(-1).tolist()
                group.append(Rollout(i, j, pids, ids, text, fin, lp))
            out.append(group)
        return out
