"""One OREAL step through `Trainer` on the embedded policy, with its metrics and the policy's
gradients at the optimiser step: two settings that must not change the update are compared on it."""
import pytest
import torch


def step_grads(tmp_path, verifier, *extra):
    """(metrics, {parameter name: gradient}) of one step; `extra`: key=value overrides."""
    from oreal.recipes.train import Trainer
    from oreal.training.config import build_config

    cfg = build_config(None, [f"out={tmp_path}", "steps=1", "batch_questions=8", "samples=4", "threads=1",
                              "micro_batch=3", "sampling.max_new_tokens=32", "algo.name=oreal",
                              "algo.actor_freeze_steps=0", "algo.credit=logprob", "optim.lr=1e-3",
                              "prompt.use_chat_template=false", "prompt.system=null", *extra])
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    grads = {}
    tr.opt.register_step_pre_hook(lambda *a: grads.update(
        {n: p.grad.clone() for n, p in tr.policy.named_parameters() if p.grad is not None}))
    try:
        m = tr.step().metrics
    finally:
        tr.close()
    return m, grads


def assert_same_step(a: tuple[dict, dict], b: tuple[dict, dict], keys) -> None:
    """Two `step_grads` results: both updated the policy, the metrics `keys` agree to 1e-4 and
    every gradient to rtol 1e-4 / atol 1e-6."""
    (ma, ga), (mb, gb) = a, b
    assert ma["actor_updated"] and mb["actor_updated"] and ma["selected"] == mb["selected"] > 3
    for k in keys:
        assert mb[k] == pytest.approx(ma[k], rel=1e-4, abs=1e-6), k
    assert ga.keys() == gb.keys() and ga
    for n in ga:
        assert torch.allclose(gb[n], ga[n], rtol=1e-4, atol=1e-6), n
