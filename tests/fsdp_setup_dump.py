"""Build a Trainer (one process, or one rank under torchrun) and save what its set-up left:
`python fsdp_setup_dump.py OUT DUMP overrides...` writes OUT.<rank>.pt with the peak host memory
(KiB) before and after `build_models` (`oreal.training.models`), how many times this process
read a model's weights (`from_pretrained`), the global RNG state and, with DUMP=1, each model's full
state dict with every buffer (the non-persistent ones too), its requires_grad flags and train/eval modes."""
import resource
import sys

import torch
from transformers import PreTrainedModel

from oreal import distributed as dist_utils
import oreal.recipes.train as train_mod
from oreal.recipes.train import Trainer
from oreal.training.config import build_config
from oreal.verify import Verifier

peaks, reads = [], []
build_models, from_pretrained = train_mod.build_models, PreTrainedModel.from_pretrained.__func__


def measured(*a, **k):
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    models = build_models(*a, **k)
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return models


def counted(cls, *a, **k):
    reads.append(cls.__name__)
    return from_pretrained(cls, *a, **k)


train_mod.build_models = measured  # where Trainer looks it up
PreTrainedModel.from_pretrained = classmethod(counted)


def dump(model):
    if model is None:
        return None
    if dist_utils.is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    else:
        sd = model.state_dict()
    sd = {k: v.detach().cpu().clone() for k, v in sd.items()}
    sd.update({"buffer " + k: b.detach().cpu().clone() for k, b in model.named_buffers()})
    return {"state": sd, "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
            "training": [m.training for m in model.modules()]}


out, dump_state, *overrides = sys.argv[1:]
if "cpu_offload=true" in overrides:  # FSDP2 pins offloaded shards, which needs a GPU: unpinned here
    import functools

    import torch.distributed.fsdp as fsdp

    fsdp.CPUOffloadPolicy = functools.partial(fsdp.CPUOffloadPolicy, pin_memory=False)
with Verifier(workers=1, timeout=4.0, memory_mb=1024) as v:
    tr = Trainer(build_config(None, overrides), v, log=lambda *a: None)
    res = {"peaks": peaks, "reads": reads, "rng": torch.get_rng_state()}
    if dump_state == "1":
        credit = None if tr.credit is None else tr.credit.model
        res.update({k: dump(m) for k, m in (("policy", tr.policy), ("ref", tr.ref), ("credit", credit))})
        res["tied"] = tr.policy.get_output_embeddings().weight is tr.policy.get_input_embeddings().weight
    torch.save(res, f"{out}.{tr.rank}.pt")
    tr.close()
