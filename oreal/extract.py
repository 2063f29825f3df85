"""String-level answer extraction, done in the parent process before anything reaches sympy.

Everything here is linear-time scanning (no backtracking regexes), so adversarial text cannot
stall the caller. The results are plain strings that a worker then parses with Math-Verify.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_FINISH_MARKERS = ("</think>", "**Final Answer**", "<conclude>")
BOXED_COMMANDS = ("\\boxed", "\\fbox")


@dataclass(frozen=True)
class Limits:
    graded_chars: int = 4000  # only the tail of the graded part is read
    answer_chars: int = 400  # a longer extracted answer is refused before sympy sees it
    brace_depth: int = 12  # deeper nesting is refused before sympy sees it
    max_candidates: int = 8  # boxed answers compared for hedging


def graded_part(response: str, markers=DEFAULT_FINISH_MARKERS, tail_chars: int = 4000) -> str:
    """Text after the last thinking-finish marker, cut to its last `tail_chars` characters."""
    cut = -1
    cut_len = 0
    for m in markers:
        i = response.rfind(m)
        if i > cut:
            cut, cut_len = i, len(m)
    text = response[cut + cut_len:] if cut >= 0 else response
    return text[-tail_chars:] if len(text) > tail_chars else text


def _braced(text: str, start: int) -> tuple[str | None, int]:
    """Content of the `{...}` group opening at text[start]; (None, end) when unclosed."""
    depth = 0
    for j in range(start, len(text)):
        c = text[j]
        if c == "{" and (j == 0 or text[j - 1] != "\\"):
            depth += 1
        elif c == "}" and (j == 0 or text[j - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start + 1:j], j + 1
    return None, len(text)


def boxed_answers(text: str) -> list[str]:
    """Contents of every closed `\\boxed{...}` / `\\fbox{...}` in order of appearance."""
    out: list[str] = []
    i = 0
    while True:
        hits = [(text.find(cmd, i), cmd) for cmd in BOXED_COMMANDS]
        hits = [(p, c) for p, c in hits if p >= 0]
        if not hits:
            return out
        pos, cmd = min(hits)
        j = pos + len(cmd)
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            content, end = _braced(text, j)
            if content is None:  # unclosed: nothing after it can be a closed box either
                return out
            out.append(content.strip())
            i = end
        else:
            i = j


def brace_depth(s: str) -> int:
    depth = best = 0
    for c in s:
        if c == "{" or c == "(" or c == "[":
            depth += 1
            best = max(best, depth)
        elif c == "}" or c == ")" or c == "]":
            depth -= 1
    return best


_GSM8K = re.compile(r"####\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")


def gsm8k_answer(text: str) -> str | None:
    """The number after the last `#### ` marker (commas dropped)."""
    found = _GSM8K.findall(text)
    return found[-1].replace(",", "") if found else None


# What a problem that asks "what goes in the box" puts in a box: not an answer. Spacing commands
# and \phantom/\hspace groups are stripped first; what is left must not be one of these.
_SPACING = re.compile(r"\\(?:phantom|hphantom|vphantom|hspace\*?|vspace\*?)\s*\{[^{}]*\}"
                      r"|\\(?:mbox|text|textrm|mathrm)\s*\{\s*\}|\\(?:quad|qquad|,|;|:|!| )|~|\s")
_PLACEHOLDERS = {"", "?", "??", "\\square", "\\Box", "\\blacksquare", "\\boxed", "\\_", "\\ldots", "\\dots",
                 "\\cdots", "...", "\\underline{}", "\\underline", "\\blank", "_", "__", "___"}


def is_placeholder(box: str) -> bool:
    """True for a box with no answer in it: empty, `\\phantom{2}`, `\\square`, `\\quad`, `?`.
    Linear-time: one substitution pass over a string the caller has already capped in length."""
    if len(box) > 64:
        return False
    return _SPACING.sub("", box) in _PLACEHOLDERS


def normalise_for_hedge(s: str) -> str:
    return "".join(s.split())
