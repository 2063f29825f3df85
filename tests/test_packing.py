"""Packed micro-batches (`pack`): each micro-batch's rows go to the models as one sequence,
positions restarting per row, and every row's log-probs, entropy, credit scores and gradients are
those of the same row alone; a model that would let packed rows see each other is refused."""
import pytest
import torch

from oreal.models import LogProbCredit, TokenHeadCredit, load_token_head
from oreal.training.batch import MicroBatch, ModelInputs, SelectedBatch, batch_tensors, count_tokens, micro_batches
from oreal.training.logprobs import PackingError, check_packing, sequence_logprobs
from step_helpers import assert_same_step, step_grads

LENGTHS = [(4, 9), (6, 2), (3, 14), (5, 1)]  # (prompt, response) tokens: rows of 13, 8, 17 and 6


def _batch(vocab: int, seed: int = 0) -> SelectedBatch:
    g = torch.Generator().manual_seed(seed)
    seqs = [(torch.randint(3, vocab, (p,), generator=g).tolist(), torch.randint(3, vocab, (r,), generator=g).tolist())
            for p, r in LENGTHS]
    ids, attn, targets, mask = batch_tensors(seqs, pad_id=0)
    n = len(seqs)
    return SelectedBatch([(i, 0) for i in range(n)], ids, attn, targets, mask, torch.ones(n), torch.ones(n),
                         [p + r for p, r in LENGTHS])


def test_packed_inputs_hold_every_row_end_to_end_and_map_back_by_hand():
    b = _batch(50)
    x = ModelInputs.packed(b)
    assert x.ids.shape == (1, 13 + 8 + 17 + 6) and x.attn is None
    assert x.position_ids[0].tolist() == [*range(13), *range(8), *range(17), *range(6)]
    assert x.ids[0, 13:21].tolist() == b.ids[1, :8].tolist()
    # a row's results come back to its row: the packed targets mapped back are the row's targets
    back = x.rows(x.targets)
    assert torch.equal(back * x.valid, b.targets * x.valid)
    assert x.valid.sum(1).tolist() == [12, 7, 16, 5]  # n - 1 predictions per row
    assert x.index[1, :3].tolist() == [13, 14, 15]
    assert (b.mask * ~x.valid).sum() == 0  # every response token has its packed prediction


def test_token_budget_micro_batches_count_the_sum_when_packed():
    lengths = [10, 30, 5, 5, 40, 20]
    assert micro_batches(lengths, 8, max_tokens=45, packed=True) == [slice(0, 3), slice(3, 5), slice(5, 6)]
    # padded counts longest x rows: 10, 30 -> 60 > 45
    assert micro_batches(lengths, 8, max_tokens=45) == [slice(0, 1), slice(1, 2), slice(2, 4), slice(4, 5),
                                                        slice(5, 6)]
    assert micro_batches([100, 3], 8, max_tokens=45, packed=True) == [slice(0, 1), slice(1, 2)]  # too long: alone


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
@pytest.mark.parametrize("chunk", [0, 5], ids=["full_logits", "chunked"])
def test_a_row_packed_gives_its_logprobs_entropy_and_gradients_alone(tiny, attn_impl, chunk):
    from transformers import AutoModelForCausalLM

    path, _, tok, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn_impl)
    b = _batch(len(tok))
    x = ModelInputs.packed(b)
    lp, ent = sequence_logprobs(model, x.ids, None, x.targets, chunk, position_ids=x.position_ids)
    lp, ent = x.rows(lp), x.rows(ent)
    (lp * b.mask).sum().backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for i, (p, r) in enumerate(LENGTHS):  # each row alone, no padding at all
        n = p + r
        alone, ent_alone = sequence_logprobs(model, b.ids[i:i + 1, :n], b.attn[i:i + 1, :n], b.targets[i:i + 1, :n - 1],
                                             chunk)
        assert torch.allclose(lp[i, :n - 1], alone[0], atol=1e-5, rtol=0), i
        assert torch.allclose(ent[i, :n - 1], ent_alone[0], atol=1e-5, rtol=0), i
        (alone * b.mask[i:i + 1, :n - 1]).sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(packed_grads[n], p.grad, atol=1e-5, rtol=1e-4), n


def test_credit_models_score_a_packed_row_as_alone(tiny):
    path, model, tok, _ = tiny
    b = _batch(len(tok), seed=1)
    x = ModelInputs.packed(b)
    for credit in (load_token_head(path), LogProbCredit(model, scale=3.0, offset=0.5)):
        packed = x.rows(credit.scores(x.ids, None, x.targets, x.position_ids))
        padded = credit.scores(b.ids, b.attn, b.targets)
        assert torch.allclose(packed * x.valid, padded * x.valid, atol=1e-5, rtol=0), type(credit).__name__


def test_a_training_step_packed_equals_the_padded_step(tmp_path, verifier):
    """pack=true against pack=false on the same step (micro-batches of 3 rows, chunked log-probs,
    the log-prob credit model): the same losses, KL, entropy, credit metrics and policy gradients."""
    assert_same_step(step_grads(tmp_path / "padded", verifier, "pack=false", "logprob_chunk=5"),
                     step_grads(tmp_path / "packed", verifier, "pack=true", "logprob_chunk=5"),
                     ("loss_pos", "loss_neg", "loss_kl", "kl", "entropy", "credit_loss", "credit_acc", "train_tokens"))


def test_a_model_that_lets_packed_rows_see_each_other_is_refused(tiny):
    """A forward that drops the position ids (one causal sequence over the whole pack) would train
    every row after the first on the rows before it: refused, naming the setting."""
    _, model, tok, _ = tiny

    def ignores_positions(ids, attn, targets, pos):
        return sequence_logprobs(model, ids, torch.ones_like(ids), targets, 0, False)[0]

    def keeps_rows_apart(ids, attn, targets, pos):
        return sequence_logprobs(model, ids, attn, targets, 0, False, pos)[0]

    assert check_packing("the policy", keeps_rows_apart, len(tok), "cpu") < 1e-5
    with pytest.raises(PackingError, match="the policy: rows packed .* set pack=false"):
        check_packing("the policy", ignores_positions, len(tok), "cpu")


def test_an_all_padding_micro_batch_packs_too():
    """FSDP2's filler micro-batch (a rank with fewer micro-batches runs it) goes through the packed path."""
    mb = MicroBatch(None, SelectedBatch.padding(0), None)
    x = ModelInputs.packed(mb.batch)
    assert x.ids.shape == (1, 2) and x.rows(x.targets).shape == mb.batch.mask.shape


def test_pack_auto_packs_only_where_the_attention_is_varlen(tiny):
    """auto: flash-attention takes packed rows as varlen segments (no work across rows); SDPA and
    eager would compute each pack's whole [S x S] product, so auto pads there. true/false as said."""
    from types import SimpleNamespace

    from oreal.training.logprobs import packs

    _, model, _, _ = tiny
    assert model.config._attn_implementation == "sdpa" and not packs("auto", model)
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    assert packs("auto", flash) and packs(True, model) and not packs(False, flash)


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_the_filler_micro_batch_adds_exactly_zero_to_every_sum_and_gradient(tmp_path, verifier, monkeypatch, pack):
    """Under FSDP2 a rank with fewer micro-batches than the busiest runs all-padding ones
    (`cut_micro_batches`: rows None, `SelectedBatch.padding`) so that every rank makes the same
    collectives. Each must add exactly 0.0 to every loss sum (policy, KL, entropy, the engine ratio's
    and truncated IS's, the credit model's BCE and accuracy) and to every gradient of the policy and
    of the credit model: the update with one is the update without it, to the bit."""
    import oreal.training.credit as credit_mod
    import oreal.training.policy as policy_mod
    from oreal import distributed as dist_utils
    from oreal.recipes.train import Trainer
    from oreal.training.config import build_config

    cfg = build_config(None, [f"out={tmp_path}", "threads=1", "micro_batch=2", "algo.credit=logprob", "algo.tis_cap=2.0",
                              "algo.actor_freeze_steps=0", "sampling.max_new_tokens=16", f"pack={str(pack).lower()}",
                              "prompt.use_chat_template=false", "prompt.system=null"])
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    grads = {}

    def no_step(model, opt, sched, clip, loss_sum):  # the gradients as the step would see them; no step
        grads[model is tr.policy] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return True

    monkeypatch.setattr(policy_mod, "guarded_step", no_step)
    monkeypatch.setattr(credit_mod, "guarded_step", no_step)
    vocab = min(len(tr.tok), tr.policy.get_input_embeddings().num_embeddings)
    g = torch.Generator().manual_seed(0)
    seqs = [(torch.randint(3, vocab, (p,), generator=g).tolist(), torch.randint(3, vocab, (r,), generator=g).tolist())
            for p, r in LENGTHS]
    ids, attn, targets, mask = batch_tensors(seqs, tr.tok.pad_token_id)
    batch = SelectedBatch([(0, 0), (0, 1), (1, 0), (1, 1)], ids, attn, targets, mask, torch.tensor([1.0, 0.0, 1.0, 0.0]),
                          torch.tensor([0.5, -0.5, 0.25, -0.25]), [p + r for p, r in LENGTHS], -0.5 * mask)

    def update(fillers: int):
        monkeypatch.setattr(dist_utils, "max_int", lambda n: n + fillers)  # the busiest rank's count
        micro = tr.micro_batches(batch, fsdp=True)  # only under FSDP2 does a rank pad to that count
        counts = count_tokens(batch, len(batch.rows), cfg.sampling.max_new_tokens)[0]
        torch.manual_seed(0)
        credit = tr.credit.update(batch, micro, counts)
        policy = tr.policy_update(micro, torch.ones_like(batch.mask), counts)  # both sides' terms non-zero
        return [mb.real for mb in micro], credit, policy, dict(grads)

    real, credit, policy, g0 = update(0)
    real1, credit1, policy1, g1 = update(1)
    tr.close()
    assert real == [True, True] and real1 == [True, True, False]  # one filler, last
    assert policy1.sums == policy.sums and policy.sums["tis_tokens"] > 0
    assert policy.sums["loss_pos"] != 0 and policy.sums["loss_neg"] != 0 and policy.sums["entropy"] != 0
    assert policy1.ratio_max == policy.ratio_max
    assert (credit1.loss, credit1.acc, credit1.pair_rank) == (credit.loss, credit.acc, credit.pair_rank)
    assert torch.equal(credit1.scores, credit.scores)
    for model in (True, False):  # the policy's gradients, the credit model's
        assert g0[model].keys() == g1[model].keys() and g0[model]
        for n, grad in g0[model].items():  # bit for bit (a filler's +0.0 would even flip a -0.0)
            assert torch.equal(grad.view(torch.int32), g1[model][n].view(torch.int32)), n
