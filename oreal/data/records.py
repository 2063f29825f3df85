"""The one record type every loader produces."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import DataError

__all__ = ["DataError", "Problem"]


@dataclass
class Problem:
    id: str
    question: str
    gold: str
    source: str = ""
    pass_rate: float | None = None
    level: str | None = None
    subject: str | None = None
    skills: list[str] = field(default_factory=list)
    solution: str | None = None  # a worked solution, when the data has one (used by SFT)
    extract: str = "boxed"  # how the verifier reads a response to this problem
    # a conversational prompt (TRL's or veRL's `prompt` as messages): it goes through the chat
    # template as it is; `question` is then its last user message
    messages: list[dict] | None = None
    # the data row's other columns: TRL-style reward functions get each as a keyword argument,
    # veRL's compute_score its data_source, reward_model.ground_truth and extra_info
    fields: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str | list[dict]:
        """What the prompt is rendered from: the conversation where the data has one, else the question."""
        return self.messages or self.question

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], "", {})}

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        known = {f: d[f] for f in cls.__dataclass_fields__ if f in d}
        return cls(**known)
