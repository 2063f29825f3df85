"""`algo.credit_init: auto` (issue 40): a log-prob credit at a, b = 1, 0 on a model with a real
vocabulary (152k, Qwen2's) scores every token near -log(152064) ~ -11.9, so c_t ~ 1e-5 and at
tau = 0.5 no positive token passes the threshold: the behaviour-cloning term is 0. Calibrated on
the first batch's log-probs, the scores straddle tau and the positives are cloned again."""
import pytest
import torch

from oreal import algo
from oreal.algo.config import AlgoConfig
from oreal.config import ConfigError
from oreal.models.credit import LogProbCredit

VOCAB = 152064


@pytest.fixture(scope="module")
def big_vocab_lm():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg).eval()


def _batch(n=8, prompt=4, resp=12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (n, prompt + resp), generator=g)
    attn = torch.ones_like(ids)
    targets = ids[:, 1:]
    mask = torch.zeros(n, prompt + resp - 1)
    mask[:, prompt - 1:] = 1
    positive = torch.arange(n) % 2 == 0
    return ids, attn, targets, mask, positive


def _bc_term(credit, lm, batch, tau=0.5):
    ids, attn, targets, mask, positive = batch
    with torch.no_grad():
        w = algo.token_importance_weights(credit.scores(ids, attn, targets), mask, positive.float(), tau)
        logp = torch.log_softmax(lm(input_ids=ids).logits[:, :-1].float(), -1).gather(-1, targets[..., None])[..., 0]
    pos = positive
    loss_pos = algo.positive_bc_loss(logp[pos], mask[pos], w[pos], torch.ones(int(pos.sum())), pos_mult_adv=False)
    return w, loss_pos


def test_auto_calibration_brings_back_the_positives_bc_term_on_a_152k_vocabulary(big_vocab_lm):
    batch = _batch()
    ids, attn, targets, mask, positive = batch
    credit = LogProbCredit(big_vocab_lm, train_lm=False, scale=1.0, offset=0.0)  # the old default
    w_old, loss_old = _bc_term(credit, big_vocab_lm, batch)
    assert w_old[positive].max().item() == 0.0 and loss_old.item() == 0.0  # before: the BC term vanishes

    with torch.no_grad():
        logp = credit.scores(ids, attn, targets)  # at 1, 0 the scores are the log-probs
    assert abs(algo.masked_mean(logp, mask).mean().item() + torch.log(torch.tensor(float(VOCAB))).item()) < 0.5
    a, b = algo.auto_calibration(algo.calibration_sums(logp, mask, positive), tau=0.5)
    credit.set_calibration(a, b)
    assert credit.scale.item() == pytest.approx(a) and credit.offset.item() == pytest.approx(b)
    w_new, loss_new = _bc_term(credit, big_vocab_lm, batch)
    real_pos = mask[positive] > 0
    share = (w_new[positive][real_pos] > 0).float().mean().item()
    print(f"\n152k vocab, tau 0.5: positive tokens with weight > 0: before {0.0:.2f}, after {share:.2f}; "
          f"mean positive weight after {w_new[positive][real_pos].mean().item():.4f}; "
          f"loss_pos before {loss_old.item():.4g}, after {loss_new.item():.4g}; a, b = {a:.3g}, {b:.3g}")
    assert share > 0 and loss_new.item() != 0.0
    # the scores straddle tau: some sequences' c_T above it, some below
    c_end = algo.masked_mean(credit.scores(ids, attn, targets).detach(), mask).sigmoid()
    assert (c_end > 0.5).any() and (c_end < 0.5).any()


def test_the_calibration_is_the_same_from_any_split_of_the_rows():
    """Every rank reaches the same a, b: they come from sums over the ranks' rows."""
    g = torch.Generator().manual_seed(2)
    logp = -torch.rand(6, 10, generator=g) * 12
    mask = (torch.rand(6, 10, generator=g) > 0.2).float()
    positive = torch.tensor([True, False, True, False, False, True])
    whole = algo.auto_calibration(algo.calibration_sums(logp, mask, positive), 0.5)
    parts = [algo.calibration_sums(logp[i:i + 2], mask[i:i + 2], positive[i:i + 2]) for i in (0, 2, 4)]
    split = algo.auto_calibration([sum(x) for x in zip(*parts)], 0.5)
    assert split == pytest.approx(whole, rel=1e-12)
    # one side missing: the mean token log-prob maps to logit(tau)
    a, b = algo.auto_calibration(algo.calibration_sums(logp, mask, torch.ones(6, dtype=torch.bool)), 0.7)
    mean = ((logp * mask).sum() / mask.sum()).item()
    assert a * mean + b == pytest.approx(torch.logit(torch.tensor(0.7)).item(), abs=1e-5)


def test_credit_init_is_auto_by_default_and_explicit_values_stay():
    assert AlgoConfig().credit_init == "auto"
    assert list(AlgoConfig(credit_init=[10.0, 1.0]).credit_init) == [10.0, 1.0]
    for bad in ("sometimes", [1.0]):
        with pytest.raises(ConfigError, match="credit_init"):
            AlgoConfig(credit_init=bad)


def test_the_trainer_calibrates_on_its_first_batch_once(tmp_path):
    from oreal.recipes.train import Trainer
    from oreal.training.config import build_config
    from tests.test_credit import _AlternateSamples

    cfg = build_config(None, [f"out={tmp_path / 'run'}", "algo.credit=logprob", "steps=2", "batch_questions=4",
                              "samples=2", "threads=1", "sampling.max_new_tokens=16", "algo.actor_freeze_steps=0",
                              "prompt.use_chat_template=false", "prompt.system=null"])
    lines = []
    tr = Trainer(cfg, _AlternateSamples(), log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    try:
        assert tr.credit.calibrate and tr.credit.model.offset.item() == 0.0
        m = tr.step().metrics
        assert not m["skipped"] and m["loss_pos"] not in (None, 0.0)
        assert not tr.credit.calibrate and tr.credit.model.offset.item() != 0.0
        assert sum("credit calibration (algo.credit_init=auto)" in x for x in lines) == 1
        tr.step()
        assert sum("credit calibration" in x for x in lines) == 1
    finally:
        tr.close()
