"""A sampler for accelerators: every random draw and every stop decision stays on the device.

`HFSampler` (the CPU default) keeps a torch.Generator per question and drops finished rows as it
goes; each costs a host sync per token, cheap on a CPU and ruinous on a GPU. Here instead:

- Each row's random number at step t is a counter-based hash of (question seed, sample index, t)
  (splitmix64 in int64 tensor ops), so one batched op draws for every row, on any device, and a
  question's rollouts still do not depend on what else is in the batch.
- Sampling is inverse-CDF on the filtered distribution (exact: one uniform per row and token).
- The batch keeps its shape: finished rows emit padding, and the host asks whether all rows are
  done only every `check_every` tokens.

Log-probs are those of the untempered distribution, as in `HFSampler`. Stop strings need decoded
text on the host, so a request with them falls back to `HFSampler`.
"""
from __future__ import annotations

import torch

from .engine import HFSampler, Rollout, SamplingConfig, _stop_ids, filter_logits, to_rollouts

_M1, _M2 = -4658895280553007687, -7723592293110705685  # splitmix64 constants as signed int64
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on an int64 tensor (multiplication wraps modulo 2**64)."""
    x = (x ^ _srl(x, 30)) * _M1
    x = (x ^ _srl(x, 27)) * _M2
    return x ^ _srl(x, 31)


def _int64(v: int) -> int:
    """A Python int wrapped to the signed int64 range, as tensor arithmetic would wrap it."""
    return (v + 2**63) % 2**64 - 2**63


def row_keys(seeds: list[int], k: int, device) -> torch.Tensor:
    """[len(seeds) * k] int64 keys, one per (question seed, sample index), prompt-major: a
    Weyl-sequence step per sample index on top of the hashed seed, hashed again."""
    s = torch.tensor([_int64(int(x)) for x in seeds], dtype=torch.long, device=device)
    j = torch.tensor([_int64((i + 1) * _GOLDEN) for i in range(k)], dtype=torch.long, device=device)
    return mix64(mix64(s)[:, None] + j[None, :]).flatten()


def counter_uniform(keys: torch.Tensor, step: int) -> torch.Tensor:
    """[B] uniforms in [0, 1) from each row's key and the step, in float64 (53 bits)."""
    x = mix64(keys + _int64((step + 1) * _GOLDEN))
    return _srl(x, 11).to(torch.float64) * 2.0 ** -53


def sample_from_logits(logits: torch.Tensor, u: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """[B] token ids: inverse CDF of the temperature/top-k/top-p distribution at the uniforms `u`
    (greedy when temperature is 0). A token of probability 0 is never drawn."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float(), cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1).double()
    cdf = probs.cumsum(-1)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=logits.size(-1) - 1)


class OnDeviceSampler(HFSampler):
    name = "hf_device"

    def __init__(self, model, tokenizer, max_batch: int = 1024, check_every: int = 16):
        super().__init__(model, tokenizer, max_batch)
        self.check_every = check_every

    def _sample(self, prompts, k, cfg, seed):
        if cfg.stop_strings:
            return super()._sample(prompts, k, cfg, seed)
        seed = self._prepare(prompts, seed)
        # one key per (question, sample); one seed for the call gives question i the seed + i
        seeds = [int(x) for x in seed] if isinstance(seed, (list, tuple)) else [seed + i for i in range(len(prompts))]
        keys = row_keys(seeds, k, next(self.model.parameters()).device)
        return self._in_chunks(prompts, k, lambda texts, s, chunk: self._decode(texts, cfg, keys[s:s + len(chunk)]))

    def _decode(self, texts: list[str], cfg: SamplingConfig, keys: torch.Tensor) -> list[Rollout]:
        model, tok = self.model, self.tokenizer
        device = keys.device
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        B, T = ids.size(0), cfg.max_new_tokens
        stop = torch.tensor(sorted(_stop_ids(tok, model)), device=device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else int(stop[0])
        tokens = torch.full((B, T), pad, dtype=torch.long, device=device)
        logps = torch.zeros((B, T), device=device)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(input_ids=ids, attention_mask=mask, position_ids=pos)
        next_pos = pos[:, -1:] + 1
        for t in range(T):
            nxt = sample_from_logits(logits, counter_uniform(keys, t), cfg)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            tokens[:, t] = nxt
            if cfg.return_logprobs:
                logps[:, t] = logits.log_softmax(-1).gather(-1, nxt[:, None]).squeeze(-1) * (~finished)
            lengths += (~finished).long()
            finished |= torch.isin(nxt, stop)
            if t == T - 1 or ((t + 1) % self.check_every == 0 and bool(finished.all())):
                break
            mask = torch.cat([mask, (~finished).long()[:, None]], dim=1)
            logits, cache = self._forward(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos,
                                          cache=cache)
            next_pos = next_pos + 1
        prompt_ids = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])]
        return to_rollouts(tok, prompt_ids, tokens, logps, lengths, finished, cfg.return_logprobs)
