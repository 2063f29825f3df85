"""Rendering problems into prompts. The template text is config; only the mechanism is code."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import setting

# The reference run's instruction (Qwen2.5-Math style): reason step by step, box the answer.
DEFAULT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class PromptConfig:
    system: str | None = setting(DEFAULT_SYSTEM, "system prompt of the chat template (unset: none)")
    use_chat_template: bool = setting(True, "use the tokenizer's chat template when it has one")
    plain_template: str = setting("Question: {question}\nAnswer: ", "prompt for models without a chat template")


def render(question: str, tokenizer=None, cfg: PromptConfig | None = None) -> str:
    """The prompt text for one question (generation starts right after it)."""
    cfg = cfg or PromptConfig()
    if cfg.use_chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": cfg.system}] if cfg.system else [])
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return cfg.plain_template.format(question=question, system=cfg.system or "")


def longest_prompt_tokens(questions, tokenizer, cfg: PromptConfig | None = None) -> int:
    """Tokens of the longest rendered prompt among `questions` (what must fit an engine's window
    beside max_new_tokens)."""
    return max((len(tokenizer(render(q, tokenizer, cfg), add_special_tokens=False)["input_ids"]) for q in questions),
               default=0)

