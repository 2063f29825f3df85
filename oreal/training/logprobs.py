"""The log-prob of every sampled token (and the entropy at each position) under a Hugging Face
causal LM, from its last hidden states and its output layer a chunk of tokens at a time
(`oreal.algo.chunked`): no [tokens x vocab] tensor, whatever the sequence length.

The model's own forward runs with `logits_to_keep=1` (one position's logits); its backbone's output,
caught by a hook, is the output layer's input (`output_hidden_states` would keep every layer's). A model's logit
transform is applied exactly (`logit_transform`) or refused: the first call on each model checks
the chunked log-probs against the model's own full logits on a few tokens and raises
`LogitMismatchError` when they disagree (a transform oreal does not know, or hidden states that
are not the head's input).
"""
from __future__ import annotations

import torch

from .. import distributed as dist_utils
from ..algo.chunked import DEFAULT_CHUNK, chunked_token_logprobs, scale, softcap
from ..algo.losses import token_entropy, token_logprobs
from ..errors import ModelError
from ..models import forward_kwargs
from ..rollout.engine import eval_mode
from ..rollout.kv_cache import base_model


class LogitMismatchError(ModelError):
    """The chunked log-probs do not reproduce the model's own logits."""


class PackingError(ModelError):
    """A model's attention lets rows packed into one sequence see each other."""


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


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, targets: torch.Tensor,
                      chunk: int = DEFAULT_CHUNK, entropy: bool = True,
                      position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[N, L-1] log pi(targets) (with gradient where the model has one) and the entropy at each
    position (no gradient); position t predicts input_ids[:, t + 1]. `chunk=0`: from the model's
    full [N, L, V] logits (the entropy only when asked for). Packed rows: `position_ids` that
    restart at each row and no attention mask (`oreal.training.batch.ModelInputs`)."""
    kw = forward_kwargs(input_ids, attention_mask, position_ids)
    if not chunk:
        logits = model(**kw).logits[:, :-1]
        return token_logprobs(logits, targets), token_entropy(logits) if entropy else None
    hf = base_model(model)  # PEFT: the model under the adapter, whose head and config are its own
    transform = logit_transform(hf.config.get_text_config(decoder=True))
    fsdp = dist_utils.is_fsdp(hf)
    if fsdp:  # FSDP2: the root's own parameters (the output layer) stay gathered after its forward
        hf.set_reshard_after_forward(False, recurse=False)
    if not getattr(hf, "_oreal_logits_checked", False):
        _check(model, hf, input_ids[:1, :8], transform, chunk)
    result = _from_hidden(model, hf, kw, targets, chunk, transform, entropy)
    if fsdp and not torch.is_grad_enabled():  # no backward will reshard them (the reference)
        hf.reshard()
    return result


def _from_hidden(model, hf, kw: dict, targets, chunk, transform, entropy: bool = True):
    """The model's last hidden states (one position's logits only), then its output layer a chunk
    at a time."""
    hidden = last_hidden_state(model, hf, kw)
    head = hf.get_output_embeddings()
    return chunked_token_logprobs(hidden[:, :-1], head.weight, targets, head.bias, chunk, transform, entropy)


def last_hidden_state(model, hf, kw: dict) -> torch.Tensor:
    """The backbone's output (after its final norm: the output layer's input), caught by a forward
    hook on the backbone while `model` runs with one position's logits. `output_hidden_states`
    would keep every layer's hidden state until the forward returns: L + 1 of them where one is
    used, 3.4 GB at 7B and 16k tokens in a forward without gradients."""
    backbone = getattr(hf, "base_model", hf)
    if backbone is hf:  # no separate backbone: the model's own list of hidden states
        return model(**kw, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    caught = []

    def hook(module, args, out):
        caught.append(out[0] if isinstance(out, tuple) else out.last_hidden_state)

    handle = backbone.register_forward_hook(hook)
    try:
        model(**kw, logits_to_keep=1)
    finally:
        handle.remove()
    return caught[-1]


@torch.no_grad()
def _check(model, hf, ids, transform, chunk) -> None:
    kw = forward_kwargs(ids, torch.ones_like(ids))
    full = model(**kw).logits[:, :-1]
    want = token_logprobs(full, ids[:, 1:])
    got, ent = _from_hidden(model, hf, kw, ids[:, 1:], chunk, transform)
    tol = logprob_tolerance(full)
    gap = max((got - want).abs().max().item(), (ent - token_entropy(full)).abs().max().item())
    if gap > tol:
        raise LogitMismatchError(
            f"{type(hf).__name__}: log-probs from its hidden states differ from its own logits by {gap:.3g} "
            f"(> {tol}): its forward transforms the logits in a way oreal does not apply; set logprob_chunk=0")
    hf._oreal_logits_checked = True


def logprob_tolerance(logits: torch.Tensor) -> float:
    """How far two exact ways of computing log-probs from these logits may differ: 1e-4 in float32;
    in bf16 / fp16 0.05, or two units in the last place of the largest logit where that is more
    (a bf16 logit of 20 is held to 0.125: a fixed 0.05 would stop a correct run)."""
    if logits.dtype == torch.float32:
        return 1e-4
    return max(0.05, 2 * torch.finfo(logits.dtype).eps * logits.detach().abs().max().item())


def packs(setting, model) -> bool:
    """Whether micro-batches go to the models packed (`pack`): true and false as said; auto packs
    where the attention is varlen (flash-attention reads the restarting position ids as separate
    rows and never computes across them). SDPA and eager attention keep packed rows apart with a
    block-diagonal mask but still compute the whole [S x S] product of a pack, which for many short
    rows costs more than their padding saves: auto pads there."""
    if setting != "auto":
        return bool(setting)
    impl = getattr(base_model(model).config, "_attn_implementation", None) or ""
    return "flash" in impl


@torch.no_grad()
def check_packing(name: str, forward, vocab_size: int, device, lengths: tuple[int, int] = (7, 5),
                  packed: bool = True) -> float:
    """Raise `PackingError` unless two rows packed into one sequence give what each gives alone:
    `forward(ids, attn, targets, position_ids)` -> [1, n - 1] per-position values (log-probs,
    scores). A model whose attention ignores restarting position ids would let a row see the
    one before it, silently. Returns the largest gap. The rows alone go through `forward` first,
    so its own first-call checks (`sequence_logprobs`: the logits) run here too; `packed=False`:
    those only."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, vocab_size, (1, n), generator=g).to(device) for n in lengths]
    alone = [forward(r, torch.ones_like(r), r[:, 1:], None)[0] for r in rows]
    if not packed:
        return 0.0
    ids = torch.cat(rows, 1)
    pos = torch.cat([torch.arange(n, device=device) for n in lengths])[None]
    packed = forward(ids, None, ids[:, 1:], pos)[0]
    a = lengths[0]
    got = [packed[: a - 1], packed[a: a + lengths[1] - 1]]
    gap = max((x.float() - y.float()).abs().max().item() for x, y in zip(got, alone))
    tol = 1e-4 if packed.dtype == torch.float32 else 0.05
    if not gap <= tol:
        raise PackingError(f"{name}: rows packed into one sequence differ from the same rows alone by {gap:.3g} "
                           f"(> {tol}): its attention does not keep packed rows apart; set pack=false")
    return gap


def check_forwards(models: list[tuple[str, object]], vocab_size: int, device, chunk: int, packed: bool) -> None:
    """Before the first rollout, on two short rows, each model (None: absent) in eval mode (no
    dropout): its log-probs from its hidden states must reproduce its own logits (`chunk`) and,
    when `packed`, packed rows must stay apart (its attention reads the restarting position ids).
    A credit model is checked through its scores. Checked, never assumed."""
    for name, model in models:
        if model is None:
            continue
        if hasattr(model, "scores"):
            forward = model.scores
        else:
            def forward(ids, attn, targets, pos, m=model):
                return sequence_logprobs(m, ids, attn, targets, chunk, False, pos)[0]
        with eval_mode(model):
            check_packing(name, forward, vocab_size, device, packed=packed)
        dist_utils.reshard_root(model)
