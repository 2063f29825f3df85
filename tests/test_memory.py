"""Issue 39: what a run keeps in memory, shown on CPU (spies on what is kept, FSDP2 on one gloo
process) and, from the model's config alone, the plan of a run's memory by part and phase."""
import os
import subprocess
import sys

import torch

from oreal.models import load_policy
from oreal.training.logprobs import sequence_logprobs


def test_log_probs_keep_one_hidden_state_not_every_layers():
    """The chunked log-probs asked the model for `output_hidden_states=True`, which keeps all L + 1
    hidden states until the forward returns (3.4 GB at 7B and 16k tokens without gradients) where
    only the last is used. A hook on the backbone now catches the one used: the same log-probs."""
    model = load_policy("default").eval()
    asked = []
    forward = model.forward

    def spy(*a, **kw):
        asked.append(kw.get("output_hidden_states"))
        out = forward(*a, **kw)
        asked.append(None if out.hidden_states is None else len(out.hidden_states))
        return out

    model.forward = spy
    ids = torch.randint(1, 100, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, _ = sequence_logprobs(model, ids, torch.ones_like(ids), ids[:, 1:], chunk=7, entropy=False)
        model.forward = forward
        full, _ = sequence_logprobs(model, ids, torch.ones_like(ids), ids[:, 1:], chunk=0, entropy=False)
    assert asked and all(x is None for x in asked), asked  # never asked for, never built
    assert torch.allclose(got, full, atol=1e-5)


def test_gradients_are_freed_after_every_update(tmp_path, verifier):
    """zero_grad ran at the start of each update, so the policy's and the credit model's gradients
    (a 7B's float32: 30 GB, 3.8 GB a GPU over 8) sat beside the rollout's KV cache until then."""
    from oreal.recipes.train import Trainer
    from oreal.training.config import build_config

    cfg = build_config(None, [f"out={tmp_path}", "steps=2", "batch_questions=8", "samples=4", "threads=1",
                              "sampling.max_new_tokens=32", "algo.actor_freeze_steps=0", "algo.credit=logprob",
                              "optim.lr=1e-3", "prompt.use_chat_template=false", "prompt.system=null"])
    tr = Trainer(cfg, verifier, log=lambda *a: None)
    try:
        m = tr.step().metrics
        assert m["actor_updated"], m  # both models stepped on this batch
        for name, model in (("policy", tr.policy), ("credit", tr.credit.model)):
            kept = [n for n, p in model.named_parameters() if p.grad is not None]
            assert not kept, (name, kept[:3])
    finally:
        tr.close()


def test_a_credit_models_root_is_resharded_after_forwards_without_gradients(tmp_path):
    """Under FSDP2 the credit model's wrapper is the root; after its forwards without gradients
    (its checks, the scores after its step) nothing resharded it, so its embeddings and output
    layer (2.2 GB at 7B) stayed gathered through the policy update. One gloo process here."""
    code = r"""
import torch
from torch.distributed.tensor import DTensor
from oreal.distributed import setup
from oreal.recipes.train import Trainer
from oreal.training.config import build_config
from oreal.verify import Verifier
setup("cpu", force=True)
cfg = build_config(None, ["out=%s", "fsdp=true", "threads=1", "batch_questions=8", "samples=4",
                          "sampling.max_new_tokens=32", "optim.lr=1e-3", "algo.credit=logprob", "algo.weights_after_credit_step=true",
                          "algo.actor_freeze_steps=0", "prompt.use_chat_template=false", "prompt.system=null"])
def root_sharded(model):
    return all(isinstance(p, DTensor) for p in model.parameters(recurse=False)) and \
        all(isinstance(p, DTensor) for n, p in model.named_parameters() if "layers" not in n)
with Verifier(workers=1) as v:
    tr = Trainer(cfg, v, log=lambda *a: None)
    after_checks = root_sharded(tr.credit.model)
    m = tr.step().metrics
    print("RESULT", after_checks, root_sharded(tr.credit.model), m["selected"])
    tr.close()
""" % (tmp_path,)
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "RANK", "WORLD_SIZE", "MASTER_ADDR")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")][-1]
    assert line.split()[1:3] == ["True", "True"] and int(line.split()[3]) > 0, line  # the step scored a batch
