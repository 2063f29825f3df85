"""The models of a run, built once and returned as one `Models`: the policy, the reference (a frozen
copy, or under LoRA the base model with the adapter off), the credit model, and what the engine
needs beside them. `build_models` loads and places them in a fixed order: a new token head draws from
the seeded global RNG, so another order gives another run.

    models = build_models(cfg, exit_stack)  # or build_models(cfg, exit_stack, policy, tokenizer)
"""
from __future__ import annotations

import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from .. import distributed as dist_utils
from ..errors import ConfigError
from ..models import (CreditModel, add_lora, checkpoint_activations, load_credit_model, load_policy, load_tokenizer,
                      resolve_model_path, set_attention, shard_lm, torch_dtype, unwrapped)
from ..rollout import engine_class, resolve_engine
from .logprobs import sequence_logprobs


@dataclass
class Models:
    policy: torch.nn.Module
    ref: torch.nn.Module | None  # None under LoRA: the policy with its adapter off
    credit: CreditModel | None  # None when the algorithm weighs every token alike
    tokenizer: object
    policy_dir: str  # the policy's weights on disk (a temporary snapshot of a model given): the engine loads them
    engine_name: str
    device: torch.device  # where inputs go (FSDP2 with CPU offload too)
    token_logprobs: Callable  # the sampled tokens' log-probs, as the log-prob credit and vLLM's check take them


def build_models(cfg, exit_stack: ExitStack, policy=None, tokenizer=None) -> Models:
    """Policy, reference and credit model of `cfg`, each placed (`place`) before the next loads.
    `policy` / `tokenizer`: a model already built (another trainer's wrapper is taken off); the
    copies then load from a snapshot of it in a temporary directory that `exit_stack` removes."""
    device = torch.device(dist_utils.local_device(cfg.device))
    policy = None if policy is None else unwrapped(policy)
    policy_dir = resolve_model_path(cfg.policy) if policy is None else None
    engine_name = resolve_engine(cfg.engine, device)
    if policy is None:  # before any weights load
        engine_class(engine_name).preflight(policy_dir)
    if policy is not None:  # a built model: the copies load from a snapshot of it
        if next(policy.parameters()).dtype != torch_dtype(cfg.dtype):
            raise ConfigError(f"dtype: the model given is {next(policy.parameters()).dtype}, the config says "
                              f"{cfg.dtype}; set dtype to match")
        policy_dir = exit_stack.enter_context(tempfile.TemporaryDirectory(prefix="oreal-policy-"))
        policy.save_pretrained(policy_dir, safe_serialization=True)
        tokenizer.save_pretrained(policy_dir)
        policy = policy.to(device)
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.policy)
    # FSDP2: each model loads into rank 0's host memory (the other ranks build it on the meta device
    # and get their shards from rank 0) and is sharded before the next one loads; fully_shard moves
    # one unit at a time to the device, so no GPU (and no other rank's host memory) holds a whole model
    load_to = dist_utils.load_device(cfg.fsdp, device)
    token_logprobs = partial(sequence_logprobs, chunk=cfg.logprob_chunk, entropy=False)  # no entropy
    if policy is None:
        policy = load_policy(cfg.policy, cfg.dtype, load_to, cfg.attn_implementation)
    attn = getattr(policy.config, "_attn_implementation", None) or cfg.attn_implementation  # the copies' too
    if cfg.lora.enabled:  # no second copy: the reference is the base model, adapter disabled
        lc = cfg.lora
        policy = add_lora(policy, lc.r, lc.alpha, lc.dropout, lc.target_modules)
    place(policy, cfg, trains=True)
    ref = None
    if not cfg.lora.enabled:
        ref = place(load_policy(policy_dir, cfg.dtype, load_to, attn).eval().requires_grad_(False), cfg)
    credit = None
    if cfg.algo.uses_credit:
        credit = load_credit_model(cfg.algo.credit, cfg.credit_from or policy_dir, cfg.dtype, load_to,
                                   cfg.algo.credit_init)
        set_attention(credit.inner, attn)  # whatever its builder loaded
        if cfg.logprob_chunk:  # a log-prob credit's LM takes the chunked path too
            credit.use_token_logprobs(token_logprobs)
        place(credit, cfg, trains=True)
    return Models(policy, ref, credit, tok, policy_dir, engine_name, device, token_logprobs)


def place(model, cfg, trains: bool = False):
    """Activation checkpointing on a model that trains, then FSDP2 sharding (before the
    optimisers: fully_shard swaps parameters for sharded DTensors)."""
    if trains and cfg.activation_checkpointing:
        checkpoint_activations(model)
    if cfg.fsdp:
        if isinstance(model, CreditModel):  # its inner model's layers, then itself
            model.shard(cfg.mixed_precision, cfg.cpu_offload)
        else:
            shard_lm(model, cfg.mixed_precision, cfg.cpu_offload)  # rank 0's weights in every rank's shards
    return model
