"""A sampler for accelerators: every random draw and every stop decision stays on the device.

`HFSampler` (the CPU default) asks the host after every token which rows have finished and drops
them from the batch now and then: cheap on a CPU, ruinous on a GPU. Here instead the batch keeps
its shape (finished rows emit padding) and the host asks whether all rows are done only every
`check_every` tokens. Both draw with the same counter-based uniforms (`oreal.rollout.sampling`).

Log-probs are those of the untempered distribution, as in `HFSampler`. Stop strings need decoded
text on the host, so a request with them falls back to `HFSampler`.
"""
from __future__ import annotations

import torch

from .engine import HFSampler, Rollout, SamplingConfig, _stop_ids, check_length, to_rollouts
from .sampling import counter_uniform, row_keys, sample_from_logits


class OnDeviceSampler(HFSampler):
    name = "hf_device"
    single_query_attention = False  # SDPA's fused kernels on an accelerator (not measured against it yet)

    def __init__(self, model, tokenizer, setup=None, max_batch: int = 1024, check_every: int = 16):
        super().__init__(model, tokenizer, setup, max_batch)
        self.check_every = check_every

    def _sample(self, prompts, k, cfg, seed):
        if cfg.stop_strings:
            return super()._sample(prompts, k, cfg, seed)
        seed = self._prepare(prompts, seed)
        # one key per (question, sample); one seed for the call gives question i the seed + i
        seeds = [int(x) for x in seed] if isinstance(seed, (list, tuple)) else [seed + i for i in range(len(prompts))]
        keys = row_keys(seeds, k, self.device)
        return self._in_chunks(prompts, k, lambda texts, s, chunk: self._decode(texts, cfg, keys[s:s + len(chunk)]),
                               cfg.max_new_tokens)

    def _decode(self, texts: list[str], cfg: SamplingConfig, keys: torch.Tensor) -> list[Rollout]:
        model, tok = self.model, self.tokenizer
        device = keys.device
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        B, T = ids.size(0), cfg.max_new_tokens
        check_length(self, int(mask.sum(-1).max()), T)
        stop = torch.tensor(sorted(_stop_ids(tok, model)), device=device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else int(stop[0])
        tokens = torch.full((B, T), pad, dtype=torch.long, device=device)
        logps = torch.zeros((B, T), device=device)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(input_ids=ids, attention_mask=mask, position_ids=pos,
                                      cache=self._new_cache(ids.size(1) + T))
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
