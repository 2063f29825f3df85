"""A sampler for accelerators: every random draw and every stop decision stays on the device.

`HFSampler` (the CPU default) asks the host after every token which rows have finished and drops
them from the batch now and then: cheap on a CPU, ruinous on a GPU. Here instead the batch keeps
its shape (finished rows emit padding) and the host hears from the device only every `check_every`
tokens: whether all rows are done and, with stop strings, the window's tokens in one copy, which
it decodes to find where each string ended (the same test `HFSampler` applies after every token,
so the rollouts are the same). Both draw with the same counter-based uniforms
(`oreal.rollout.sampling`) and prefill each distinct prompt once for its K samples.

Log-probs are those of the untempered distribution, as in `HFSampler`.
"""
from __future__ import annotations

import torch

from .engine import HFSampler, Rollout, SamplingConfig, _stop_ids, ends_with_stop_string, to_rollouts
from .sampling import counter_uniform, row_keys, sample_from_logits


class OnDeviceSampler(HFSampler):
    name = "hf_device"
    single_query_attention = False  # SDPA's fused kernels on an accelerator (not measured against it yet)

    def __init__(self, model, tokenizer, setup=None, max_batch: int = 1024, check_every: int = 16):
        super().__init__(model, tokenizer, setup, max_batch)
        self.check_every = check_every

    def _sample(self, prompts, k, cfg, seed):
        seed = self._prepare(prompts, seed)
        # one key per (question, sample); one seed for the call gives question i the seed + i
        seeds = [int(x) for x in seed] if isinstance(seed, (list, tuple)) else [seed + i for i in range(len(prompts))]
        keys = row_keys(seeds, k, self.device)
        return self._in_chunks(prompts, k, lambda texts, s, chunk: self._decode(texts, cfg, keys[s:s + len(chunk)]),
                               cfg.max_new_tokens)

    def _decode(self, texts: list[str], cfg: SamplingConfig, keys: torch.Tensor) -> list[Rollout]:
        model, tok = self.model, self.tokenizer
        device = keys.device
        B, T = len(texts), cfg.max_new_tokens
        logits, cache, mask, pos, prompt_ids = self._prefill(texts, T)
        stop = torch.tensor(sorted(_stop_ids(tok, model)), device=device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else int(stop[0])
        tokens = torch.full((B, T), pad, dtype=torch.long, device=device)
        logps = torch.zeros((B, T), device=device)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        next_pos = pos[:, -1:] + 1
        checked = 0  # tokens [0, checked) have been searched for stop strings
        for t in range(T):
            nxt = sample_from_logits(logits, counter_uniform(keys, t), cfg)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            tokens[:, t] = nxt
            if cfg.return_logprobs:
                logps[:, t] = logits.log_softmax(-1).gather(-1, nxt[:, None]).squeeze(-1) * (~finished)
            lengths += (~finished).long()
            finished |= torch.isin(nxt, stop)
            last = t == T - 1
            if (t + 1) % self.check_every == 0 or last:
                if cfg.stop_strings:
                    checked = _stop_at_strings(tok, tokens, lengths, finished, checked, t + 1, cfg.stop_strings)
                if last or bool(finished.all()):
                    break
            mask = torch.cat([mask, (~finished).long()[:, None]], dim=1)
            logits, cache = self._forward(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos,
                                          cache=cache)
            next_pos = next_pos + 1
        if cfg.stop_strings and checked < t + 1:  # stopped early by the stop tokens: search the rest
            _stop_at_strings(tok, tokens, lengths, finished, checked, t + 1, cfg.stop_strings)
        return to_rollouts(tok, prompt_ids, tokens, logps, lengths, finished, cfg.return_logprobs)


def _stop_at_strings(tok, tokens: torch.Tensor, lengths: torch.Tensor, finished: torch.Tensor,
                     start: int, end: int, stop_strings: list[str]) -> int:
    """Search tokens [start, end) of every row for the first one that completes a stop string,
    with one host copy; a row found is cut there (`lengths`) and finished, in place. The tokens a
    row drew after its stop string are never read. Returns `end`."""
    lo = max(0, start - 15)  # a token's test looks back over up to 16 tokens
    host = torch.cat([tokens[:, lo:end], lengths[:, None]], dim=1).tolist()
    for b, row in enumerate(host):
        *window, n = row
        for t in range(start, min(end, n)):
            if ends_with_stop_string(tok, window[max(0, t - 15) - lo:t + 1 - lo], stop_strings):
                lengths[b], finished[b] = t + 1, True
                break
    return end
