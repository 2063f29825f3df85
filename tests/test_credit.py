"""Credit sources learn from outcomes: the planted-marker control (the token RM's plumbing can
learn a token that decides the outcome), and the calibrated log-prob credit model."""
import copy

import torch

from oreal import algo
from oreal.models import LogProbCredit, TokenHeadCredit, load_credit_model, load_policy, load_token_head
from oreal.optim import make_optimizer
from oreal.training.batch import batch_tensors


def _marker_batch(g, n, vocab, marker, length=12):
    """n responses of random tokens; the incorrect half carries the marker at a random place
    before the last token (the reference's RM scores a token from the prefix before it, so a
    marker is first seen by the score of the token after it)."""
    seqs, rewards, where = [], [], []
    for i in range(n):
        resp = (torch.randint(10, vocab, (length,), generator=g)).tolist()
        resp = [t if t != marker else marker + 1 for t in resp]
        ok = i % 2 == 0
        pos = int(torch.randint(length - 1, (1,), generator=g))
        if not ok:
            resp[pos] = marker
        seqs.append(([5, 6, 7], resp))
        rewards.append(1.0 if ok else 0.0)
        where.append(None if ok else pos)
    return seqs, torch.tensor(rewards), where


def test_token_rm_learns_a_planted_marker(tiny):
    path, _, tok, _ = tiny
    torch.manual_seed(0)
    rm = load_token_head(path)
    vocab, marker = len(tok), 42
    # The zero-initialised head (the reference's) trains alone at first. lr 1e-3 for 80 steps:
    # ranking 0.97, localisation AUC 0.97 with 1 and with 2 torch threads (70 / 90 steps: 1.0 / 1.0
    # and 1.0 / 0.96; 60: ranking 0.84). At 2e-3 the localisation AUC falls to 0.53 at step 60.
    opt, sched = make_optimizer(rm, 1e-3, 0.0, 0, 80, 1e-3, betas=(0.9, 0.95))  # the betas it was tuned with
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        seqs, r, _ = _marker_batch(g, 32, vocab, marker)
        ids, attn, targets, mask = batch_tensors(seqs, tok.pad_token_id)
        w = rm.scores(ids, attn, targets)
        loss = algo.credit_sequence_loss(w, mask, r) / len(seqs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    seqs, r, where = _marker_batch(torch.Generator().manual_seed(99), 64, vocab, marker)
    ids, attn, targets, mask = batch_tensors(seqs, tok.pad_token_id)
    with torch.no_grad():
        w = rm.scores(ids, attn, targets)
    seq = algo.masked_mean(w, mask)
    wins, pairs = algo.pair_ranking(seq.tolist(), (r > 0.5).tolist(), [i // 2 for i in range(64)])
    assert wins / pairs > 0.9
    start = 2  # shifted: position len(prompt) - 1 scores the first response token
    # the first score that has seen the marker is that of the token after it
    marked = [(w[i, start + p + 1].item(), [w[i, start + j].item() for j in range(12) if j != p + 1])
              for i, p in enumerate(where) if p is not None]
    below = [float(m < o) for m, others in marked for o in others]
    assert sum(below) / len(below) > 0.9  # localisation AUC: the marker scores below the other tokens


def test_pair_ranking_by_hand():
    wins, n = algo.pair_ranking([0.9, 0.1, 0.5, 0.5, 0.7], [True, False, True, False, True], [0, 0, 1, 1, 2])
    assert (wins, n) == (1.5, 2)  # question 0: a win; question 1: a tie; question 2: no pair


def test_logprob_credit_scores_saves_and_loads(tiny, tmp_path):
    path, _, tok, _ = tiny
    lm = load_policy(path)
    credit = LogProbCredit(lm, train_lm=True, scale=2.0, offset=0.5)
    seqs = [([5, 6, 7], [20, 21, 22]), ([5, 6], [30, 31])]
    ids, attn, targets, mask = batch_tensors(seqs, tok.pad_token_id)
    w = credit(ids, attn, targets)
    with torch.no_grad():
        lp = algo.token_logprobs(lm(input_ids=ids, attention_mask=attn).logits[:, :-1], targets)
    assert torch.allclose(w, 2.0 * lp + 0.5, atol=1e-5)
    assert {id(p) for p in credit.calibration()} == {id(credit.log_scale), id(credit.offset)}
    with torch.no_grad():
        credit.offset.fill_(0.123456789)
    credit.save(tmp_path / "rm", tok)
    other = LogProbCredit(load_policy(path), train_lm=False)
    other.load(tmp_path / "rm")
    assert other.offset.item() == credit.offset.item() and other.scale.item() == credit.scale.item()
    assert not any(p.requires_grad for p in other.lm.parameters())  # surprise: only a, b learn
    # the full-state form FSDP2 uses: read() gives back this module's state dict, to the bit, and
    # saving from a given state dict (as FSDP2 gathers it) writes the same directory
    full = credit.state_dict()
    back = credit.read(tmp_path / "rm")
    assert set(back) <= set(full) and set(full) - set(back) <= {"lm.lm_head.weight"}  # tied to the embedding
    assert {"log_scale", "offset"} <= set(back) and all(torch.equal(back[k], full[k]) for k in back)
    credit.save(tmp_path / "rm2", tok, {k: v.clone() for k, v in full.items()})
    again = credit.read(tmp_path / "rm2")
    assert set(back) <= set(again) <= set(full) and all(torch.equal(again[k], full[k]) for k in again)


def test_optimiser_state_of_0d_calibration_loads_into_the_1_element_one(tiny):
    """Checkpoints from before FSDP2 support hold AdamW moments of 0-d a, b; the log-prob credit
    reshapes them on load into its [1]-shaped parameters, which then step exactly as the 0-d ones
    would."""
    from oreal.distributed import load_optimizer_state

    def adam(p):
        return torch.optim.AdamW([p], lr=0.1)

    credit = LogProbCredit(load_policy(tiny[0]), train_lm=False, scale=2.0)
    old = torch.nn.Parameter(credit.offset.detach().reshape(()).clone())
    opt_old = adam(old)
    for g in (0.5, -0.25):
        old.grad = torch.tensor(g)
        opt_old.step()
    with torch.no_grad():
        credit.offset.copy_(old.detach().reshape(1))
    opt_new = adam(credit.offset)
    load_optimizer_state(credit, opt_new, copy.deepcopy(opt_old.state_dict()))
    credit.after_optimizer_load(opt_new)
    assert opt_new.state[credit.offset]["exp_avg"].shape == (1,)
    old.grad, credit.offset.grad = torch.tensor(0.75), torch.tensor([0.75])
    opt_old.step()
    opt_new.step()
    assert credit.offset.item() == old.item()


def test_credit_models_by_name_behind_one_interface(tiny, tmp_path):
    """`algo.credit` names a model in CREDIT_MODELS; each scores [N, L-1], saves an HF directory
    and loads it back to the bit through the same methods."""
    path, _, tok, _ = tiny
    seqs = [([5, 6, 7], [20, 21, 22]), ([5, 6], [30, 31])]
    ids, attn, targets, mask = batch_tensors(seqs, tok.pad_token_id)
    for kind in ("token_head", "logprob", "surprise"):
        torch.manual_seed(0)
        credit = load_credit_model(kind, path, init=(3.0, 0.25))
        if kind == "token_head":  # a trained head, not the zero-initialised one a new model also has
            torch.nn.init.normal_(credit.score.weight)
        with torch.no_grad():
            w = credit.scores(ids, attn, targets)
        assert w.shape == targets.shape
        credit.save(tmp_path / kind, tok)
        torch.manual_seed(1)  # a new model (a zero head, a, b at 1, 0): the load must replace it
        back = load_credit_model(kind, path)
        with torch.no_grad():
            assert not torch.equal(back.scores(ids, attn, targets), w), kind  # so an unchanged one fails below
        back.load(tmp_path / kind)
        with torch.no_grad():
            assert torch.equal(back.scores(ids, attn, targets), w), kind
        lrs = sorted(g.get("lr", -1.0) for g in credit.param_groups(0.01, 0.05))
        assert (0.05 in lrs) == (kind != "token_head"), (kind, lrs)  # the calibration's own learning rate


def test_a_new_credit_model_is_a_builder_and_one_registry_line(monkeypatch, tmp_path, verifier):
    """algo.credit names a builder of CREDIT_MODELS; registering one makes it a valid setting that
    the Trainer loads, steps and checkpoints like the built-in ones."""
    from oreal.models.credit import CREDIT_MODELS, LogProbCredit
    from oreal.models import load_policy
    from oreal.recipes.train import Trainer
    from oreal.training.config import build_config

    built = []

    def frozen_at_init(src, dtype, device, init):  # the frozen policy's log-prob, a and b fixed too
        model = LogProbCredit(load_policy(src, dtype, device), train_lm=False, scale=init[0], offset=init[1])
        built.append(model)
        return model

    monkeypatch.setitem(CREDIT_MODELS, "frozen_at_init", frozen_at_init)
    cfg = build_config(None, [f"out={tmp_path / 'run'}", "algo.credit=frozen_at_init", "steps=1", "batch_questions=4",
                              "samples=4", "threads=1", "sampling.max_new_tokens=24", "algo.actor_freeze_steps=0",
                              "prompt.use_chat_template=false", "prompt.system=null"])
    tr = Trainer(cfg, _AlternateSamples(), log=lambda *a: None)
    try:
        assert tr.credit.model is built[0]
        before = [p.detach().clone() for p in built[0].calibration()]
        m = tr.step().metrics
        # a real step (every question half right: none filtered) that changed the model's weights
        assert not m["skipped"] and m["credit_loss"] is not None and m["kept_questions"] == 4
        after = built[0].calibration()
        assert all(p.requires_grad for p in after) and not any(torch.equal(a, b) for a, b in zip(before, after))
        assert not any(p.requires_grad for p in built[0].lm.parameters())  # the LM stays frozen
        tr.save(tmp_path / "final")
        assert (tmp_path / "final" / "credit" / "credit_head.json").exists()
    finally:
        tr.close()


class _AlternateSamples:
    """A verifier that grades every other response of a question right: no question is all right
    or all wrong, so a step never skips its update."""

    def verify_batch(self, items, extract="boxed", questions=None):
        from oreal.verify.verifier import Verdict

        return [Verdict(i % 2 == 0, "ok") for i, _ in enumerate(items)]
