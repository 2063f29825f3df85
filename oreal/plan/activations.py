"""Activations measured, not guessed: the trainer's update of one micro-batch (policy forward
with gradients, the reference's forward, backward) on copies of the model cut to one and to two
decoder layers, at the model's widths and a 256-row vocabulary, at three micro-batches each, in
fresh processes; fitted to what does not grow with the depth and what each layer keeps
(`Activations`), remembered on disk."""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch


def _cut(config, n: int, vocab: int = 256):
    """A copy of `config` with `n` decoder layers and a small vocabulary (the per-layer lists cut)."""
    import copy

    c = copy.deepcopy(config)
    text = c.get_text_config(decoder=True)
    old = text.num_hidden_layers
    for k, v in list(vars(text).items()):
        if isinstance(v, list) and len(v) == old:
            setattr(text, k, v[:n])
    text.num_hidden_layers = n
    text.vocab_size = vocab
    for k in ("pad_token_id", "bos_token_id", "eos_token_id"):
        v = getattr(text, k, None)
        if isinstance(v, int) and v >= vocab:
            setattr(text, k, 0)
    return c


_PROBE = r"""
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
from oreal.models import forward_kwargs
from oreal.models.loading import attention_kwargs, checkpoint_activations, train_without_dropout
from oreal.training.logprobs import sequence_logprobs
a = json.loads(sys.argv[1])
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
torch.set_num_threads(a["threads"])
torch.manual_seed(0)
config = AutoConfig.for_model(**a["config"])
dtype = getattr(torch, a["dtype"])
dev = torch.device(a["device"])
policy = AutoModelForCausalLM.from_config(config, dtype=dtype, **attention_kwargs(a["attn"])).to(dev)
ref = AutoModelForCausalLM.from_config(config, dtype=dtype, **attention_kwargs(a["attn"])).to(dev).eval()
checkpoint_activations(policy) if a["ckpt"] else train_without_dropout(policy)
rows, L = a["rows"], a["length"]
def inputs(rows, L):
    ids = torch.randint(1, 200, (rows, L), device=dev)
    if a["packed"]:
        return (ids.reshape(1, -1), None, ids.reshape(1, -1)[:, 1:], torch.arange(L, device=dev).repeat(rows)[None])
    mask = torch.ones_like(ids)
    mask[-1, L - L // 4:] = 0
    return (ids, mask, ids[:, 1:], None)
def update(kw):  # the trainer's policy update on one micro-batch: policy forward, reference forward, backward
    lp, ent = sequence_logprobs(policy, kw[0], kw[1], kw[2], a["chunk"], True, kw[3])
    with torch.no_grad():
        rlp, _ = sequence_logprobs(ref, kw[0], kw[1], kw[2], a["chunk"], False, kw[3])
    (lp - rlp).exp().sum().backward()
update(inputs(1, 8))  # lazy set-up on a short row, as the trainer's first step is
policy.zero_grad(set_to_none=False)  # the gradients stay allocated: the plan counts them from shapes
import gc; gc.collect()
if dev.type == "cuda":  # the device's own count of what its tensors hold
    torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    update(inputs(rows, L))
    print("PEAK", torch.cuda.max_memory_allocated() - before)
else:
    open("/proc/self/clear_refs", "w").write("5")
    before = rss("VmRSS:")
    update(inputs(rows, L))
    print("PEAK", rss("VmHWM:") - before)
"""


# glibc keeps freed blocks under its mmap threshold in its heap (a threshold that grows with the
# blocks freed, up to 32 MiB), so a process's peak resident size depends on the order of its past
# allocations; fixed at 64 KiB, every tensor past it is mapped and unmapped whole and the resident
# size follows the live tensors, which is what the plan counts (and what a GPU's allocator holds)
LIVE_RSS = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _probe(config, dtype: str, attn, checkpointing: bool, packed: bool, rows: int, length: int, chunk: int,
           device: str = "cpu") -> int:
    """Peak resident bytes, over what it held before, of the trainer's update of one micro-batch of
    `rows` x `length` tokens (policy forward with gradients, reference forward, backward) on a
    model of `config`, measured in a fresh process on this machine's kernels."""
    import json
    import os
    import subprocess
    import sys

    args = dict(config=config.to_dict(), dtype=dtype, attn=attn, ckpt=checkpointing, packed=packed, rows=rows,
                length=length, chunk=chunk, device=device, threads=max(1, min(2, os.cpu_count() or 1)))
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, **LIVE_RSS})
    if out.returncode != 0:
        raise RuntimeError(f"the memory probe failed: {out.stderr[-1500:]}")
    return int(next(x for x in out.stdout.splitlines() if x.startswith("PEAK ")).split()[1])


class Activations(NamedTuple):
    """An update of T tokens whose attention spans `span` tokens (a padded row, or a whole pack)
    needs fixed + T * (per_token + per_token_span * span) bytes beyond the states for what does
    not grow with the depth (embeddings, one layer rebuilt or its gradients in flight, one
    attention call's mask and scores, the reference's forward), and as much again with the
    `layer_` coefficients for what each decoder layer keeps."""
    fixed: float
    per_token: float
    per_token_span: float
    layer_fixed: float
    layer_per_token: float
    layer_per_token_span: float

    def fixed_bytes(self, tokens: int, span: int) -> float:
        return self.fixed + tokens * (self.per_token + self.per_token_span * span)

    def layer_bytes(self, tokens: int, span: int) -> float:
        return self.layer_fixed + tokens * (self.layer_per_token + self.layer_per_token_span * span)


# (rows, length) of the probes: three micro-batches give the three coefficients of each cut
# exactly; padded rows vary the tokens at one span and the span at one token count, packed rows
# (span = tokens) give a quadratic in the tokens at 1k, 2k and 4k
PROBES = {False: ((4, 256), (4, 512), (8, 256)), True: ((4, 256), (4, 512), (8, 512))}


def fit_activations(one: list[int], two: list[int], packed: bool) -> Activations:
    """The coefficients from the peaks of the probes (`PROBES[packed]`, in order) on the cuts of
    one (`one`) and two (`two`) decoder layers: per layer what two hold over one, the rest fixed.
    A coefficient the noise drives below zero counts as zero (the plan must not shrink with size)."""
    points = []
    for rows, length in PROBES[packed]:
        tokens = rows * length
        span = tokens if packed else length
        points.append((1.0, float(tokens), float(tokens * span)))
    A = torch.tensor(points, dtype=torch.float64)
    layer = torch.linalg.solve(A, torch.tensor([b - a for a, b in zip(one, two)], dtype=torch.float64))
    fixed = torch.linalg.solve(A, torch.tensor([2 * a - b for a, b in zip(one, two)], dtype=torch.float64))
    return Activations(*(max(0.0, v) for v in (*fixed.tolist(), *layer.tolist())))


@lru_cache(maxsize=64)
def activation_model(config_json: str, dtype: str, attn: str | None, checkpointing: bool, packed: bool,
                     chunk: int, device: str = "cpu") -> Activations:
    """The activations of the trainer's update on a model of `config_json`, measured: the peaks of
    the update of copies of the model cut to one and to two decoder layers (a 256-row vocabulary:
    the output layer is counted from shapes), at the micro-batches of `PROBES`, each in a fresh
    process (`_probe`) on `device` (a GPU's own allocator count there, else the resident size on
    CPU), fitted by `fit_activations`."""
    import hashlib
    import json
    import os
    from pathlib import Path

    import transformers
    from transformers import AutoConfig

    # remembered on disk: a key of everything the measurement depends on (the probe's code and
    # micro-batches, the model's config, the settings, the torch and transformers versions)
    key = hashlib.sha256(json.dumps([_PROBE, LIVE_RSS, PROBES[packed], config_json, dtype, attn, checkpointing, packed, chunk,
                                     device, torch.cuda.get_device_name() if device == "cuda" else None,
                                     torch.__version__, transformers.__version__]).encode()).hexdigest()
    store = Path(os.environ.get("OREAL_CACHE", Path.home() / ".cache" / "oreal")) / "activations.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known and len(known[key]) == len(Activations._fields):
        return Activations(*known[key])
    config = AutoConfig.for_model(**json.loads(config_json))
    one = [_probe(_cut(config, 1), dtype, attn, checkpointing, packed, r, n, chunk, device) for r, n in PROBES[packed]]
    two = [_probe(_cut(config, 2), dtype, attn, checkpointing, packed, r, n, chunk, device) for r, n in PROBES[packed]]
    result = fit_activations(one, two, packed)
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        known[key] = list(result)
        tmp = store.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(store)
    except OSError:  # a read-only home: measured again next time
        pass
    return result
