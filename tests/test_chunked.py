"""Log-probs and entropy from hidden states, a chunk of tokens at a time (`oreal.algo.chunked`):
the same values and gradients as the full [tokens x vocab] logits, for any chunk size, with the
models' logit transforms, and memory that does not grow with the tokens."""
import pytest
import torch

from oreal.algo.chunked import chunked_token_logprobs, scale, softcap
from step_helpers import assert_same_step, step_grads


def _full(hidden, weight, bias, targets, transform=None):
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    if transform is not None:
        logits = transform(logits)
    lsm = torch.log_softmax(logits, -1)
    logp = lsm.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets >= 0)
    return logp, -(lsm.exp() * lsm).sum(-1).detach()


def _inputs(n=37, h=16, v=101, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = (0.5 * torch.randn(v, h, generator=g)).requires_grad_()
    b = (0.1 * torch.randn(v, generator=g)).requires_grad_() if bias else None
    targets = torch.randint(v, (n,), generator=g)
    targets[[3, 20]] = -1  # padding positions: log-prob 0, no gradient
    return hidden, weight, b, targets


@pytest.mark.parametrize("vocab_chunk", [7, 50, 32768], ids=["vocab_in_15_blocks", "vocab_in_3_blocks", "vocab_whole"])
@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 512])
@pytest.mark.parametrize("transform", [None, softcap(2.0), scale(0.7)], ids=["plain", "softcap", "scale"])
def test_values_entropy_and_gradients_equal_the_full_logits(chunk, transform, vocab_chunk):
    """Chunks of tokens that cut the rows, blocks of the vocabulary that cut it unevenly (101 rows:
    the running log-sum-exp across blocks), each transform."""
    hidden, weight, bias, targets = _inputs()
    grad_out = torch.randn(targets.shape, generator=torch.Generator().manual_seed(1))
    ref_lp, ref_ent = _full(hidden, weight, bias, targets, transform)
    ref = torch.autograd.grad((ref_lp * grad_out).sum(), (hidden, weight, bias))
    lp, ent = chunked_token_logprobs(hidden, weight, targets, bias, chunk=chunk, logit_transform=transform,
                                     vocab_chunk=vocab_chunk)
    got = torch.autograd.grad((lp * grad_out).sum(), (hidden, weight, bias))
    assert torch.allclose(lp, ref_lp, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
    assert lp[3] == 0 and lp[20] == 0 and not ent.requires_grad
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert got[0][3].abs().max() == 0  # a padding position sends no gradient


def test_batched_shapes_no_bias_and_a_frozen_head():
    hidden, weight, _, targets = _inputs(n=24, bias=False)
    h3, t3 = hidden.detach().reshape(2, 12, -1).requires_grad_(), targets.reshape(2, 12)
    frozen = weight.detach()  # the reference model: no gradient to the head
    lp, ent = chunked_token_logprobs(h3, frozen, t3, chunk=5)
    ref_lp, ref_ent = _full(h3, frozen, None, t3)
    assert lp.shape == (2, 12) and torch.allclose(lp, ref_lp, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
    (g,) = torch.autograd.grad(lp.sum(), h3)
    (ref_g,) = torch.autograd.grad(ref_lp.sum(), h3)
    assert torch.allclose(g, ref_g, atol=1e-5)


def test_bf16_weights_within_a_stated_tolerance():
    """bf16 hidden states and head: the logits are taken in float32 per chunk, as the full path's
    `.float()` does, so both round the same products; gradients agree to bf16's precision."""
    hidden, weight, bias, targets = _inputs()
    hb, wb = hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()
    lp, _ = chunked_token_logprobs(hb, wb, targets, chunk=7)
    ref_lp, _ = _full(hb, wb, None, targets)
    assert torch.allclose(lp, ref_lp, atol=1e-5)
    g = torch.autograd.grad(lp.sum(), (hb, wb))
    ref = torch.autograd.grad(ref_lp.sum(), (hb, wb))
    for a, b in zip(g, ref):
        assert a.dtype == torch.bfloat16 and torch.allclose(a.float(), b.float(), atol=2e-2, rtol=2e-2)


def test_memory_does_not_grow_with_tokens_x_vocab():
    """The autograd graph keeps the inputs only: no saved tensor of size tokens x vocab."""
    hidden, weight, bias, targets = _inputs(n=400, h=8, v=3000)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        lp, _ = chunked_token_logprobs(hidden, weight, targets, bias, chunk=32)
    assert max(saved) < 400 * 3000 / 10  # the biggest is the head, 3000 x 8
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        _full(hidden, weight, bias, targets)
    assert max(saved) >= 400 * 3000  # the full path keeps [tokens x vocab]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_training_step_with_chunked_logprobs_equals_the_full_logits_step(tmp_path, verifier, lora):
    """logprob_chunk=5 (chunks that cut every row) against logprob_chunk=0: the same losses, KL,
    entropy, credit loss and policy gradients, with the reference a frozen copy or the LoRA base,
    and the log-prob credit model's LM on the chunked path too."""
    extra = ["lora.enabled=true", "lora.r=4"] if lora else []
    assert_same_step(step_grads(tmp_path / "full", verifier, "logprob_chunk=0", *extra),
                     step_grads(tmp_path / "chunked", verifier, "logprob_chunk=5", *extra),
                     ("loss_pos", "loss_neg", "loss_kl", "kl", "entropy", "engine_ratio_max", "credit_loss", "credit_acc"))


def test_a_logit_transform_oreal_does_not_apply_is_refused(tiny):
    """A forward that changes its logits after the head (here: doubles them) cannot be reproduced
    from the hidden states: the first call says so instead of training on other log-probs."""
    from oreal.training.logprobs import LogitMismatchError, sequence_logprobs

    _, model, tok, _ = tiny
    ids = torch.randint(3, 100, (2, 10))
    attn = torch.ones_like(ids)
    lp, _ = sequence_logprobs(model, ids, attn, ids[:, 1:], chunk=4)  # checked once, then trusted
    full = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    assert torch.allclose(lp, full, atol=1e-5)

    class Doubled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            out = self.inner(**kw)
            out.logits = out.logits * 2
            return out

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        @property
        def config(self):
            return self.inner.config

    with pytest.raises(LogitMismatchError, match="transforms the logits"):
        sequence_logprobs(Doubled(model), ids, attn, ids[:, 1:], chunk=4)


def test_the_vllm_checks_trainer_logprobs_take_the_trainers_chunked_path(tiny):
    """The engine's log-prob check compares against the trainer's own path (the trainer passes
    it in EngineSetup.token_logprobs): chunked, it equals the full logits the check used before."""
    from functools import partial

    from oreal.rollout import Rollout
    from oreal.rollout.vllm_engine import trainer_logprobs
    from oreal.training.logprobs import sequence_logprobs

    _, model, _, _ = tiny
    g = torch.Generator().manual_seed(3)
    rows = [Rollout(0, i, torch.randint(3, 150, (p,), generator=g).tolist(),
                    torch.randint(3, 150, (r,), generator=g).tolist(), "", True) for i, (p, r) in enumerate(((5, 9), (8, 3)))]
    full = trainer_logprobs(model, rows, 0)
    chunked = trainer_logprobs(model, rows, 0, partial(sequence_logprobs, chunk=4, entropy=False))
    assert len(full) == 12 and torch.allclose(torch.tensor(chunked), torch.tensor(full), atol=1e-5, rtol=0)
