"""The training prompts against the model's window, at the trainer's start-up, before any weights
load: prompts that cannot fit at all are refused in one line, and `sampling.max_new_tokens=auto`
becomes what the window leaves after the longest prompt (at most 1024), said once. The memory plan,
the engine, the loss's Dr. GRPO normaliser and the run's config.yaml all see that number."""
from __future__ import annotations

import copy
from dataclasses import replace

from ..data import load_list, render
from ..errors import ConfigError
from ..models import load_tokenizer, resolve_model_path
from ..rollout import options_class, resolve_engine
from ..rollout.lengths import fit_max_new_tokens, is_auto, token_lengths, window_of


def with_max_new_tokens(cfg, n: int):
    """A shallow copy of the TrainConfig `cfg` with sampling.max_new_tokens = `n` (`cfg` itself
    when it already says `n`): the caller's config is never changed."""
    if cfg.sampling.max_new_tokens == n:
        return cfg
    out = copy.copy(cfg)
    out.sampling = replace(cfg.sampling, max_new_tokens=n)
    return out


def as_fitted(cfg, fitted):
    """`cfg` with the max_new_tokens a trainer's start-up fitted (`fitted`, its config) where `cfg`
    leaves it to auto: what a run's config.yaml records, so `oreal eval --run` samples as it did."""
    return with_max_new_tokens(cfg, fitted.sampling.max_new_tokens) if is_auto(cfg.sampling.max_new_tokens) else cfg


def engine_window(cfg, config) -> int | None:
    """The window the run's engine will serve a model of HF `config` with (`window_of`)."""
    engine = resolve_engine(cfg.engine, cfg.device)
    return window_of(config, getattr(cfg, engine, None) if options_class(engine) else None)


def fitted_to(cfg, window: int | None, longest: int) -> tuple:
    """(`cfg` with auto resolved for a longest prompt of `longest` tokens on `window` positions, the
    line that says so or None): what `oreal plan` plans for, as the trainer would fit it."""
    n, said = fit_max_new_tokens(cfg.sampling.max_new_tokens, [longest], window)
    return with_max_new_tokens(cfg, n), said


def fit_lengths(cfg, problems=None, tokenizer=None, policy=None, log=print) -> tuple:
    """(config, problems, tokenizer, longest prompt's tokens) for a trainer: the training questions
    (read from `cfg.data` unless given) rendered and tokenised once, checked against the window of
    the model (`policy`'s config where one is built, else the policy directory's config.json, no
    weights) and of the engine's own setting (vllm.max_model_len); the config with auto resolved
    (a copy). The problems and tokenizer are those read here, so that nothing loads twice."""
    if policy is not None and tokenizer is None:
        raise ConfigError("a built model needs its tokenizer: pass tokenizer=")
    problems = problems if problems is not None else load_list(cfg.data, data_dir_=cfg.data_dir,
                                                               preset=cfg.data_preset)
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.policy)
    if policy is not None:
        config = policy.config
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(resolve_model_path(cfg.policy))
    lengths = token_lengths(tok, [render(p.prompt, tok, cfg.prompt) for p in problems])
    n, said = fit_max_new_tokens(cfg.sampling.max_new_tokens, lengths, engine_window(cfg, config),
                                 what="training prompts")
    if said:
        log(said)
    return with_max_new_tokens(cfg, n), problems, tok, max(lengths, default=0)
