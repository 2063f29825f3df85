"""What makes a cached decode step cheap on a CPU, built on transformers' own interfaces.

At the embedded policy's size a decode step is memory traffic, not arithmetic: transformers'
`DynamicCache` copies every layer's keys and values into a new tensor at each token (`torch.cat`),
and its SDPA path runs CPU flash attention for a single query, together about half of a step.
Here instead:

- `PreallocatedLayer`: a `DynamicLayer` that writes each token into a buffer sized for the whole
  sequence and hands attention a view of the filled part (no copy); dropping finished rows is one
  `index_select`, done by the sampler only when enough rows have finished.
- `decode_attention`: for one query per row, grouped-query attention as two batched matmuls over
  the cached keys (no repeat of the key/value heads, no flash kernel), registered with
  transformers' `AttentionInterface` (with SDPA's masks); anything else goes to SDPA unchanged.
  `sampling_attention(model)` switches a model to it for a block and back afterwards, so training
  forwards never see it.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

DECODE_ATTENTION = "oreal_decode"


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values in [B, heads, capacity, dim] buffers filled left to right."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        if not self.is_initialized:
            b, h, _, d = key_states.shape
            self.device, self.is_initialized = key_states.device, True
            self.key_buf = key_states.new_empty(b, h, self.capacity, d)
            self.value_buf = value_states.new_empty(b, value_states.shape[1], self.capacity, value_states.shape[-1])
        if self.length + n > self.capacity:
            raise RuntimeError(f"KV cache full: {self.length} + {n} tokens > capacity {self.capacity}")
        self.key_buf[:, :, self.length:self.length + n] = key_states
        self.value_buf[:, :, self.length:self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def _views(self) -> None:
        self.keys, self.values = self.key_buf[:, :, :self.length], self.value_buf[:, :, :self.length]

    def get_seq_length(self) -> int:
        return self.length

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:  # copy only the filled part into buffers of the new batch size
            idx = beam_idx.to(self.key_buf.device)
            self.key_buf, self.value_buf = (self._select(buf, idx) for buf in (self.key_buf, self.value_buf))
            self._views()

    def _select(self, buf: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        out = buf.new_empty(len(idx), *buf.shape[1:])
        torch.index_select(buf[:, :, :self.length], 0, idx, out=out[:, :, :self.length])
        return out

    batch_select_indices = reorder_cache

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a preallocated sampling cache is never cropped")


def preallocated_cache(num_layers: int, capacity: int) -> DynamicCache:
    """A `DynamicCache` whose layers are `PreallocatedLayer`s for sequences of `capacity` tokens."""
    cache = DynamicCache()
    cache.layers = [PreallocatedLayer(capacity) for _ in range(num_layers)]
    return cache


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention in transformers' interface (query [B, H, q, D], key/value [B, KV, L, D], SDPA's
    boolean mask [B, 1, q, L] or None) returning [B, q, H, D]. One query per row: softmax(q k^T) v
    with the H // KV query heads of a key/value head as the rows of one small matmul."""
    if query.shape[2] != 1 or dropout or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    b, h, _, d = query.shape
    kv = key.shape[1]
    scale = scaling if scaling is not None else d ** -0.5
    scores = torch.matmul(query.reshape(b, kv, h // kv, d), key.transpose(-1, -2)) * scale  # [B, KV, G, L]
    if attention_mask is not None:
        mask = attention_mask[:, :, -1:, :]  # [B, 1, 1, L]
        scores = scores.masked_fill(~mask if mask.dtype == torch.bool else mask < 0, float("-inf"))
    out = torch.matmul(scores.softmax(-1).to(value.dtype), value)  # [B, KV, G, D]
    return out.reshape(b, h, 1, d).transpose(1, 2), None


AttentionInterface.register(DECODE_ATTENTION, decode_attention)
AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


def base_model(model):
    """The HF model under wrappers (PEFT), whose config and forward are the model's own."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def sampling_attention(model):
    """`decode_attention` for the block when the model runs SDPA (the default); any other
    implementation (eager, flash) is left alone. Restored afterwards whatever happens."""
    base = base_model(model)
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        yield
        return
    base.set_attn_implementation(DECODE_ATTENTION)
    try:
        yield
    finally:
        base.set_attn_implementation("sdpa")
