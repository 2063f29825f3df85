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

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], "")}

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        known = {f: d[f] for f in cls.__dataclass_fields__ if f in d}
        return cls(**known)
