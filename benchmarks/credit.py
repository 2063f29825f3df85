"""Does a credit source know which tokens made a response wrong? Measured against ground truth.

    python benchmarks/credit.py [--train-questions 1500] [--heldout 500] [--k 8] [--steps 150]

The curriculum's worked solution is unique, so in a wrong response the first character that
departs from it marks the wrong number and its step (`oreal.data.curriculum.first_error`). The
embedded policy samples K responses per question (T=1, the demo's prompt); each credit source
scores every response token (higher = better) and is measured on held-out questions by:

- ranking: in one (correct, incorrect) pair per question, how often the correct response's
  sequence score is the higher (0.5 is chance);
- AUC: the tokens of the wrong number (and, second column, of its whole step) against all other
  tokens of located wrong responses, ranked by -score (do low scores mark the error?);
- hit: how often the lowest-scoring token of a located wrong response lies on the wrong number.

Sources: the production credit models of `oreal.models.load_credit_model`, trained with the
outcome BCE of sigmoid(mean_t w_t) and the optimiser groups the trainer gives them:
`untrained` (a fresh token RM head), `rm` (`algo.credit=token_head`, the paper's token RM: policy
backbone + token head), `surprise` (`algo.credit=surprise`: a log pi_ref(y_t) + b with pi_ref
frozen) and `logprob` (`algo.credit=logprob`: a log pi_phi(y_t) + b, phi a trainable copy of the
policy, with the demo's a, b at the start and its learning rates); and `implicit` (PRIME's
w_t = beta * log pi_phi(y_t)/pi_ref(y_t), a comparison this benchmark alone holds). Learned
sources train on one pair per training question, 32 pairs a step for --steps steps: the demo's
RM sees about as many pairs. Every measure is a ranking, so the affine a, b change it only
through training.
"""
from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oreal.training.threads import limit_openmp_spin  # noqa: E402

limit_openmp_spin()  # as the `oreal` command does, before torch loads OpenMP

import torch  # noqa: E402

from oreal import algo  # noqa: E402
from oreal.data import curriculum, load_list  # noqa: E402
from oreal.evaluation import sample_and_grade  # noqa: E402
from oreal.data.curriculum import token_spans  # noqa: E402
from oreal.models import load_credit_model, load_policy, load_tokenizer  # noqa: E402
from oreal.optim import make_optimizer  # noqa: E402
from oreal.recipes.demo import demo_config_path  # noqa: E402
from oreal.rollout import make_engine  # noqa: E402
from oreal.training.batch import batch_tensors  # noqa: E402
from oreal.training.config import build_config  # noqa: E402
from oreal.verify import Verifier  # noqa: E402

DEMO = build_config(demo_config_path(), [])


def sample(policy, tok, problems, k, seed, verifier):
    """(problem, rollout, correct) for K samples of each problem."""
    engine = make_engine("hf_sampler", policy, tok)
    out = []
    for p, group, verdicts in sample_and_grade(engine, tok, problems, verifier, k, DEMO.sampling, DEMO.prompt,
                                               seed=[seed + i for i in range(len(problems))], batch_prompts=128):
        out.extend((p, r, v.correct) for r, v in zip(group, verdicts))
    return out


def pairs(rows, rng):
    """One random (correct, incorrect) pair per question that has both."""
    by_q: dict[str, tuple[list, list]] = {}
    for p, r, ok in rows:
        by_q.setdefault(p.id, ([], []))[0 if ok else 1].append(r)
    return [(rng.choice(c), rng.choice(w)) for c, w in by_q.values() if c and w]


def located(rows, tok):
    """Wrong responses whose first departure from the solution is found: (rollout, wrong-number
    token indices, wrong-step token indices)."""
    out = []
    for p, r, ok in rows:
        if ok or not r.finished:
            continue
        err = curriculum.first_error(r.text, p.solution)
        if err is None:
            continue
        (n_lo, n_hi), (s_lo, s_hi) = err
        spans = token_spans(r.response_ids, tok)
        num = {i for i, (a, b) in enumerate(spans) if a < n_hi and b > n_lo and b > a}
        step = {i for i, (a, b) in enumerate(spans) if a < s_hi and b > s_lo and b > a}
        if num:
            out.append((r, num, step))
    return out


def _tensors(rollouts, pad):
    seqs = [(r.prompt_ids, r.response_ids) for r in rollouts]
    ids, attn, targets, mask = batch_tensors(seqs, pad)
    return ids, attn, targets, mask, [len(r.prompt_ids) - 1 for r in rollouts]


def _per_response(scores, starts, rollouts):
    return [scores[i, s:s + len(r.response_ids)] for i, (s, r) in enumerate(zip(starts, rollouts))]


class Credit:
    """A production credit model, trained on the outcome BCE with the groups the trainer uses
    (the calibration a, b at `calib_lr`)."""

    def __init__(self, kind, tok, lr, seed=0, init=(1.0, 0.0), calib_lr=0.05, name=None):
        torch.manual_seed(seed)  # a new token head draws from the global RNG
        self.name, self.tok, self.lr, self.calib_lr = name or kind, tok, lr, calib_lr
        self.model = load_credit_model(kind, "default", init=init)

    def logits_for(self, ids, attn, targets):
        return self.model.scores(ids, attn, targets)

    def groups(self):
        return self.model.param_groups(0.01, self.calib_lr)

    def fit(self, train_pairs, steps, batch=32, seed=0):
        opt, sched = make_optimizer(self.groups(), self.lr, 0.01, 10, steps, self.lr / 5, betas=DEMO.optim.betas)
        rng = random.Random(seed)
        self.model.train()
        for _ in range(steps):
            chosen = rng.sample(train_pairs, min(batch, len(train_pairs)))
            rolls = [c for c, _ in chosen] + [w for _, w in chosen]
            r = torch.tensor([1.0] * len(chosen) + [0.0] * len(chosen))
            ids, attn, targets, mask, _ = _tensors(rolls, self.tok.pad_token_id)
            loss = algo.credit_sequence_loss(self.logits_for(ids, attn, targets), mask, r) / len(rolls)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            opt.step()
            sched.step()
        self.model.eval()

    @torch.no_grad()
    def score(self, rollouts):
        ids, attn, targets, mask, starts = _tensors(rollouts, self.tok.pad_token_id)
        return _per_response(self.logits_for(ids, attn, targets), starts, rollouts)


class Untrained(Credit):
    def fit(self, train_pairs, steps):
        self.model.eval()


class Implicit(Credit):
    """PRIME's implicit PRM: w_t = beta * (log pi_phi(y_t) - log pi_ref(y_t)), phi from the policy."""

    def __init__(self, policy, tok, lr=3e-4, beta=1.0):
        self.name, self.model, self.ref, self.tok, self.lr, self.beta = "implicit", copy.deepcopy(policy), policy, tok, lr, beta

    def groups(self):
        return self.model

    def logits_for(self, ids, attn, targets):
        lp = algo.token_logprobs(self.model(input_ids=ids, attention_mask=attn).logits[:, :-1], targets)
        with torch.no_grad():
            ref = algo.token_logprobs(self.ref(input_ids=ids, attention_mask=attn).logits[:, :-1], targets)
        return self.beta * (lp - ref)


def auc(pos: list[float], neg: list[float]) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney)."""
    allv = torch.tensor(pos + neg)
    ranks = allv.argsort().argsort().float() + 1
    # average ranks of ties
    uniq, inv = allv.unique(return_inverse=True)
    for u in range(len(uniq)):
        sel = inv == u
        ranks[sel] = ranks[sel].mean()
    r_pos = ranks[: len(pos)].sum().item()
    return (r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def measure(source, heldout_pairs, located_rows) -> dict:
    c_scores = source.score([c for c, _ in heldout_pairs])
    w_scores = source.score([w for _, w in heldout_pairs])
    rank = sum(float(a.mean() > b.mean()) + 0.5 * float(a.mean() == b.mean())
               for a, b in zip(c_scores, w_scores)) / len(heldout_pairs)
    pos_n, neg_n, pos_s, neg_s, hits = [], [], [], [], 0
    scores = source.score([r for r, _, _ in located_rows])
    for (r, num, step), s in zip(located_rows, scores):
        for i, v in enumerate((-s).tolist()):
            (pos_n if i in num else neg_n).append(v)
            (pos_s if i in step else neg_s).append(v)
        hits += int(int(s.argmin()) in num)
    return {"ranking": rank, "auc": auc(pos_n, neg_n), "auc_step": auc(pos_s, neg_s),
            "hit": hits / len(located_rows)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-questions", type=int, default=1500)
    ap.add_argument("--heldout", type=int, default=500)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--sources", default="untrained,rm,surprise,implicit,logprob")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok, policy = load_tokenizer("default"), load_policy("default").eval()
    rng = random.Random(args.seed)
    t0 = time.time()
    with Verifier(workers=2) as v:
        train_rows = sample(policy, tok, curriculum.generate(args.train_questions, "train", seed=11), args.k, 1, v)
        held_rows = sample(policy, tok, load_list("curriculum_test")[: args.heldout], args.k, 10**6, v)
    train_pairs, held_pairs, loc = pairs(train_rows, rng), pairs(held_rows, rng), located(held_rows, tok)
    n_wrong = sum(not ok for _, _, ok in held_rows)
    lucky = sum(ok and curriculum.first_error(r.text, p.solution) is not None for p, r, ok in held_rows)
    print(f"rollouts: {len(train_rows)} train ({len(train_pairs)} pairs), {len(held_rows)} held-out "
          f"({len(held_pairs)} pairs, {len(loc)} of {n_wrong} wrong responses located; {lucky} correct ones "
          f"depart from the solution); sampling {time.time() - t0:.0f}s")
    print("| source | held-out ranking | AUC (wrong number) | AUC (wrong step) | hit | wall time (s) |")
    print("|---|---|---|---|---|---|")
    demo = dict(lr=DEMO.optim.credit_lr, init=tuple(DEMO.algo.credit_init), calib_lr=DEMO.algo.credit_calib_lr)
    makers = {"untrained": lambda: Untrained("token_head", tok, 1e-3, seed=args.seed, name="untrained"),
              "rm": lambda: Credit("token_head", tok, 1e-3, seed=args.seed),
              "surprise": lambda: Credit("surprise", tok, seed=args.seed, **demo),
              "implicit": lambda: Implicit(policy, tok),
              "logprob": lambda: Credit("logprob", tok, seed=args.seed, **demo)}
    for name in args.sources.split(","):
        t1 = time.time()
        src = makers[name]()
        src.fit(train_pairs, args.steps)
        m = measure(src, held_pairs, loc)
        print(f"| {name} | {m['ranking']:.3f} | {m['auc']:.3f} | {m['auc_step']:.3f} | {m['hit']:.3f} | "
              f"{time.time() - t1:.0f} |", flush=True)


if __name__ == "__main__":
    main()
