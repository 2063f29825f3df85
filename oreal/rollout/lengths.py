"""How long a response may be: the model's window, `sampling.max_new_tokens=auto` resolved to what
that window leaves after the longest prompt, and the one-line refusals of prompts that do not fit.

`auto` is resolved once, where the model and the prompts are known (the trainer's start-up, `oreal
eval`, `oreal plan`, `evaluation.evaluate`), and said in one line; an engine only ever samples a
number. Pure functions on token counts: the callers render and tokenise the prompts."""
from __future__ import annotations

from ..errors import ConfigError

AUTO = "auto"
AUTO_CAP = 1024  # auto takes at most this many (the fixed default before it fitted the model)


def is_auto(value) -> bool:
    return value == AUTO or value is None


def check_max_new_tokens(value, key: str = "sampling.max_new_tokens") -> None:
    """A number of tokens >= 1, or auto: anything else is a ConfigError naming `key`."""
    if not (is_auto(value) or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)):
        raise ConfigError(f"{key}: expected a number of tokens >= 1 or auto, got {value!r}")


def window_of(config, options=None) -> int | None:
    """The positions an engine serves a model of HF `config` with: the engine's own `max_model_len`
    option where it has one set (vLLM's), else the model's `max_position_embeddings` (as the HF
    engines and vLLM read it); None where the model declares none."""
    own = getattr(options, "max_model_len", 0) or 0
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return own or getattr(text, "max_position_embeddings", None) or None


def token_lengths(tokenizer, texts) -> list[int]:
    """Tokens of each rendered prompt, as the engines tokenise them (no special tokens added)."""
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def check_prompts_fit(lengths: list[int], window: int | None, what: str = "prompts") -> None:
    """Prompts that leave no room for a single response token in `window` positions: one line
    saying how many, the longest and the window (no max_new_tokens can help them)."""
    if window is None:
        return
    over = [n for n in lengths if n >= window]
    if over:
        raise ConfigError(f"{len(over)} of {len(lengths)} {what} do not fit the model: the longest is {max(over)} "
                          f"tokens and the model's window (max_model_len) is {window} positions, with no room for a "
                          f"response; drop or shorten them, or use a model with a longer window")


def fit_max_new_tokens(value, lengths: list[int], window: int | None, cap: int = AUTO_CAP,
                       key: str = "sampling.max_new_tokens", what: str = "prompts",
                       how: str | None = None) -> tuple[int, str | None]:
    """(max_new_tokens, the line that says what auto took, or None) for prompts of `lengths` tokens on
    a model of `window` positions. A number given is kept (the engine checks it against each
    prompt, `check_length`); auto is what the window leaves after the longest prompt, at most `cap`.
    Prompts that do not fit at all are refused either way (`check_prompts_fit`). `how`: how to set
    it instead (default `key=N`)."""
    check_max_new_tokens(value, key)
    check_prompts_fit(lengths, window, what)
    if not is_auto(value):
        return value, None
    how = how or f"{key}=N sets it"
    longest = max(lengths, default=0)
    if window is None:
        return cap, f"{key}: {cap} (auto: the model declares no window; {how})"
    n = min(cap, window - longest)
    return n, (f"{key}: {n} (auto: the model's window of {window} positions less the longest prompt's {longest} "
               f"tokens, at most {cap}; {how})")


def check_number(engine, max_new_tokens) -> None:
    """An engine samples a number of tokens: auto reaching one is a ConfigError, not a TypeError
    inside its loop."""
    if is_auto(max_new_tokens):
        raise ConfigError(f"engine={engine.name}: max_new_tokens=auto reached the engine; it samples a number of "
                          f"tokens (the trainer, `oreal eval` and evaluation.evaluate resolve auto first: "
                          f"oreal.rollout.lengths.fit_max_new_tokens)")


def check_length(engine, longest_prompt: int, max_new_tokens: int) -> None:
    """Every engine refuses the same way: a prompt plus max_new_tokens past `max_model_len` is a
    ConfigError, before any sampling (positions past the model's would sample garbage)."""
    check_number(engine, max_new_tokens)
    limit = engine.max_model_len
    if limit is not None and longest_prompt + max_new_tokens > limit:
        raise ConfigError(f"engine={engine.name}: a prompt of {longest_prompt} tokens + max_new_tokens "
                          f"{max_new_tokens} exceeds the engine's max_model_len {limit}; lower "
                          f"sampling.max_new_tokens (or shorten the prompts)")
