"""What perfect token credit would buy: OREAL at tau = 0.5 with the ground truth as the credit.

    python benchmarks/oracle_credit.py [--seed 0] [--steps 300] [--side both|pos|neg] [KEY=VALUE ...]

A diagnostic, not a credit source: it needs the curriculum's worked solutions. A curriculum
solution is unique, so `curriculum.first_error` finds where a response departs from it. The
oracle's running correctness is 1 before that token and 0 from it on (1 throughout for a
response that never departs), so at tau = 0.5 a correct response's tokens weigh 1 (up to a lucky
departure) and a wrong response's weigh 0 before its first error and 1 from it on.
`--side pos` puts the oracle's weights on the positives only and keeps the configured credit
model's on the negatives; `--side neg` the other way round. Everything else is the demo's
config with the KEY=VALUE overrides given (the credit model still trains; its weights are
replaced). Prints pass@1 before and after on the demo's held-out set.
"""
from __future__ import annotations

from oreal.training.threads import limit_openmp_spin

limit_openmp_spin()  # as the `oreal` command does, before torch loads OpenMP

import argparse
import time

import torch

from oreal.data import load_list
from oreal.data.curriculum import first_error_token
from oreal.recipes.demo import demo_config_path
from oreal.recipes.train import Trainer, train
from oreal.training.callbacks import Callback
from oreal.training.config import build_config
from oreal.verify import Verifier


def oracle_weights(batch, roll, tok) -> torch.Tensor:
    """[N, T] weights at tau = 0.5 from the ground-truth first error of every selected row."""
    w = torch.zeros_like(batch.mask, dtype=torch.float32)
    for i, (b, k) in enumerate(batch.rows):
        r, solution = roll.rollout(b, k), roll.questions[b].solution
        cols = torch.nonzero(batch.mask[i]).flatten().cpu()
        j = first_error_token(r.response_ids, r.text, solution, tok) if solution else None
        right = torch.zeros(len(cols))
        right[: len(cols) if j is None else j] = 1.0  # the prefix before the first error is right
        w[i, cols] = right if bool(batch.positive[i]) else 1.0 - right
    return w.to(batch.mask.device)


class OracleWeights(Callback):
    """The token weights' hook: the oracle's weights instead of the credit model's, on one side
    or both."""

    def __init__(self, side: str = "both"):
        self.side = side

    def on_token_weights(self, trainer, batch, rollouts, weights, scores):
        oracle = oracle_weights(batch, rollouts, trainer.tok)
        positive = batch.positive.view(-1, 1)
        if self.side == "pos":
            return torch.where(positive, oracle, weights)
        if self.side == "neg":
            return torch.where(positive, weights, oracle)
        return oracle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--side", choices=["both", "pos", "neg"], default="both")
    ap.add_argument("--out", default="runs/oracle_credit")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE settings over the demo config")
    args = ap.parse_args()
    cfg = build_config(demo_config_path(), ["algo.tau=0.5", *args.overrides, f"seed={args.seed}",
                                            f"steps={args.steps}", "max_seconds=0", f"out={args.out}",
                                            "overwrite=true", "log_every=0"])
    if not cfg.algo.uses_credit:
        raise SystemExit("the oracle replaces token weights: algo.token_weights must not be none")
    with Verifier(workers=cfg.verifier_workers) as v:
        t0 = time.time()
        tr = Trainer(cfg, v, log=lambda *a: None, callbacks=[OracleWeights(args.side)])
        test = load_list(cfg.eval_data)[: cfg.eval_limit]
        before = tr.evaluate(test, k=cfg.eval_k)["pass@1"]
        hist = train(cfg, v, log=lambda *a: None, trainer=tr).history
        after = tr.evaluate(test, k=cfg.eval_k)["pass@1"]
    print(f"oracle credit ({args.side}), seed {args.seed}, {len(hist)} steps: pass@1 {before:.3f} -> {after:.3f} "
          f"({after - before:+.3f}) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
