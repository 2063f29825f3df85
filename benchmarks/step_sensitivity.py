"""How far one optimiser step can move a policy before it breaks.

    python benchmarks/step_sensitivity.py [--lrs 1e-3 3e-4 1e-4] [--eval 100] [--policy DIR]

A fresh AdamW's first step is, per parameter, the learning rate times the sign of the gradient
(bias correction makes m / sqrt(v) = g / |g|). This script applies exactly that step, once, to a
copy of the policy (default: the embedded one) and measures held-out pass@1 afterwards, with the
demo config's prompt and sampling (T=1), for gradients of:

- `grpo`: the GRPO loss on one rollout batch of the policy (32 questions x 8 samples),
- `gold_sft`: teacher-forced NLL of the gold worked solutions of the same 32 questions,
- `random`: a random sign per parameter (the same step size, no direction),

and, at the largest learning rate, the GRPO step restricted to one parameter group. It showed why
RL could not improve the first embedded policy (SFT annealed to a low learning rate) and why the
current one (constant SFT learning rate) takes RL steps of 3e-4 (docs/notebook.md).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oreal import algo  # noqa: E402
from oreal.data import load_list, render  # noqa: E402
from oreal.evaluation import evaluate, sample_and_grade  # noqa: E402
from oreal.models import load_policy, load_tokenizer  # noqa: E402
from oreal.recipes.demo import demo_config_path  # noqa: E402
from oreal.recipes.sft import collate, encode_example  # noqa: E402
from oreal.training.batch import batch_tensors  # noqa: E402
from oreal.training.config import build_config  # noqa: E402
from oreal.rollout import make_engine  # noqa: E402
from oreal.verify import Verifier  # noqa: E402

DEMO = build_config(demo_config_path(), [])  # the prompt and sampling the demo trains and evaluates with
PROMPT, SAMPLING = DEMO.prompt, DEMO.sampling
EVAL_K = 4  # samples per held-out question
GROUPS = {
    "embeddings": lambda n: "embed_tokens" in n,
    "attention, layer 0": lambda n: "layers.0.self_attn" in n,
    "attention, layers 1-3": lambda n: "self_attn" in n and "layers.0." not in n,
    "MLP, all layers": lambda n: ".mlp." in n,
    "norms": lambda n: "norm" in n,
}


def pass_at_1(model, tok, test, verifier) -> float:
    return evaluate(make_engine("hf_sampler", model, tok), tok, test, verifier, k=EVAL_K, sampling=SAMPLING,
                    prompt=PROMPT, seed=7)["pass@1"]


def grpo_gradient(model, tok, probs, verifier, k: int) -> dict:
    engine = make_engine("hf_sampler", model, tok)
    seqs, rewards = [], []
    for _, group, verdicts in sample_and_grade(engine, tok, probs, verifier, k, SAMPLING, PROMPT, seed=0):
        seqs += [(r.prompt_ids, r.response_ids) for r in group]
        rewards.append([float(v.correct) for v in verdicts])
    adv = algo.group_advantages(torch.tensor(rewards), "grpo").flatten()
    ids, attn, targets, mask = batch_tensors(seqs, tok.pad_token_id)
    logp = algo.token_logprobs(model(input_ids=ids, attention_mask=attn).logits[:, :-1], targets)
    loss = algo.normalise(algo.pg_loss(logp, logp.detach(), mask, adv, torch.ones_like(mask)), mask.sum())
    return _grads(model, loss)


def gold_gradient(model, tok, probs) -> dict:
    ids, labels, attn = collate([encode_example(tok, render(p.question, tok, PROMPT), p.solution) for p in probs],
                                tok.pad_token_id)
    return _grads(model, model(input_ids=ids, attention_mask=attn, labels=labels).loss)


def _grads(model, loss) -> dict:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def stepped(model, direction: dict, lr: float, keep=lambda n: True):
    """A copy of `model` after one descent step of size lr along sign(direction)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if keep(n):
                p.sub_(lr * direction[n].sign())
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-4, 1e-4])
    ap.add_argument("--eval", type=int, default=100, help=f"held-out questions (x{EVAL_K} samples each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", default="default", help="HF directory of the policy (default: the embedded one)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    tok, model = load_tokenizer(args.policy), load_policy(args.policy, "float32", "cpu")
    train, test = load_list("curriculum_train"), load_list("curriculum_test")[: args.eval]
    probs = [train[i] for i in torch.randperm(len(train))[:32].tolist()]
    with Verifier(workers=2) as v:
        before = pass_at_1(model, tok, test, v)
        dirs = {"grpo": grpo_gradient(model, tok, probs, v, 8), "gold_sft": gold_gradient(model, tok, probs),
                "random": {n: torch.randn_like(p) for n, p in model.named_parameters()}}
        print(f"held-out pass@1 before: {before:.3f} ({len(test)} questions x {EVAL_K} samples, T={SAMPLING.temperature:g})\n")
        print("| step direction | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " |")
        print("|---|" + "---|" * len(args.lrs))
        for name, d in dirs.items():
            cells = [f"{pass_at_1(stepped(model, d, lr), tok, test, v):.3f}" for lr in args.lrs]
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        lr = max(args.lrs)
        print(f"\n| GRPO step of lr {lr:g} on one parameter group only | parameters | pass@1 after |\n|---|---|---|")
        for gname, keep in GROUPS.items():
            n = sum(p.numel() for name, p in model.named_parameters() if keep(name))
            print(f"| {gname} | {n:,} | {pass_at_1(stepped(model, dirs['grpo'], lr, keep), tok, test, v):.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
