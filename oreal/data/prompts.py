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


def render(prompt: str | list[dict], tokenizer=None, cfg: PromptConfig | None = None) -> str:
    """The prompt text for one question (generation starts right after it). A conversation (a
    list of messages: TRL's or veRL's conversational `prompt`) goes through the tokenizer's chat
    template as it is, without `cfg.system`; one that ends with an assistant message is continued
    from it, as TRL does. Without a chat template it is its last user message in `plain_template`."""
    cfg = cfg or PromptConfig()
    chat = cfg.use_chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None)
    if not isinstance(prompt, str):
        messages = list(prompt)
        if not chat:
            question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
            return cfg.plain_template.format(question=question, system=cfg.system or "")
        prefill = messages[-1]["role"] == "assistant"
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not prefill,
                                             continue_final_message=prefill)
    if chat:
        messages = ([{"role": "system", "content": cfg.system}] if cfg.system else [])
        messages.append({"role": "user", "content": prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return cfg.plain_template.format(question=prompt, system=cfg.system or "")


def longest_prompt_tokens(prompts, tokenizer, cfg: PromptConfig | None = None) -> int:
    """Tokens of the longest rendered prompt among `prompts` (questions, or conversations:
    `Problem.prompt`), what must fit an engine's window beside max_new_tokens."""
    return max((len(tokenizer(render(q, tokenizer, cfg), add_special_tokens=False)["input_ids"]) for q in prompts),
               default=0)
