"""The log-prob of every sampled token (and the entropy at each position) under a Hugging Face
causal LM, from its last hidden states and its output layer a chunk of tokens at a time
(`oreal.algo.chunked`): no [tokens x vocab] tensor, whatever the sequence length.

The model's own forward runs with `logits_to_keep=1` (one position's logits) and
`output_hidden_states=True`; its last hidden state is the output layer's input. A model's logit
transform is applied exactly (`logit_transform`) or refused: the first call on each model checks
the chunked log-probs against the model's own full logits on a few tokens and raises
`LogitMismatchError` when they disagree (a transform oreal does not know, or hidden states that
are not the head's input).
"""
from __future__ import annotations

import torch

from .. import distributed as dist_utils
from ..algo.chunked import DEFAULT_CHUNK, chunked_token_logprobs, scale, softcap
from ..rollout.kv_cache import base_model
from ..algo.losses import token_entropy, token_logprobs


class LogitMismatchError(RuntimeError):
    """The chunked log-probs do not reproduce the model's own logits."""


def logit_transform(config):
    """The transform a model's forward applies to its logits, from its config (None: none)."""
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2, Gemma 3
    factor = 1.0
    if getattr(config, "logits_scaling", None):  # Granite divides
        factor /= float(config.logits_scaling)
    if getattr(config, "logit_scale", None):  # Cohere multiplies
        factor *= float(config.logit_scale)
    if cap and factor != 1.0:
        raise LogitMismatchError("a model with both soft-capping and a logit scale is not supported")
    return softcap(float(cap)) if cap else scale(factor) if factor != 1.0 else None


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor,
                      chunk: int = DEFAULT_CHUNK, entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[N, L-1] log pi(targets) (with gradient where the model has one) and the entropy at each
    position (no gradient); position t predicts input_ids[:, t + 1]. `chunk=0`: from the model's
    full [N, L, V] logits (the entropy only when asked for)."""
    if not chunk:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        return token_logprobs(logits, targets), token_entropy(logits) if entropy else None
    hf = base_model(model)  # PEFT: the model under the adapter, whose head and config are its own
    transform = logit_transform(hf.config.get_text_config(decoder=True))
    fsdp = dist_utils.is_fsdp(hf)
    if fsdp:  # FSDP2: the root's own parameters (the output layer) stay gathered after its forward
        hf.set_reshard_after_forward(False, recurse=False)
    if not getattr(hf, "_oreal_logits_checked", False):
        _check(model, hf, input_ids, attention_mask, transform, chunk)
    result = _from_hidden(model, hf, input_ids, attention_mask, targets, chunk, transform)
    if fsdp and not torch.is_grad_enabled():  # no backward will reshard them (the reference)
        hf.reshard()
    return result


def _from_hidden(model, hf, input_ids, attention_mask, targets, chunk, transform):
    """The model's last hidden states (one position's logits only), then its output layer a chunk
    at a time."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1)
    head = hf.get_output_embeddings()
    return chunked_token_logprobs(out.hidden_states[-1][:, :-1], head.weight, targets, head.bias, chunk, transform)


@torch.no_grad()
def _check(model, hf, input_ids, attention_mask, transform, chunk, tokens: int = 8) -> None:
    ids, attn = input_ids[:1, :tokens], attention_mask[:1, :tokens]
    full = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    want = token_logprobs(full, ids[:, 1:])
    got, ent = _from_hidden(model, hf, ids, attn, ids[:, 1:], chunk, transform)
    tol = 1e-4 if full.dtype == torch.float32 else 0.05
    gap = max((got - want).abs().max().item(), (ent - token_entropy(full)).abs().max().item())
    if gap > tol:
        raise LogitMismatchError(
            f"{type(hf).__name__}: log-probs from its hidden states differ from its own logits by {gap:.3g} "
            f"(> {tol}): its forward transforms the logits in a way oreal does not apply; set logprob_chunk=0")
    hf._oreal_logits_checked = True
