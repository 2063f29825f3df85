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


_THOUSANDS = re.compile(r"-?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")
_PLAIN_NUMBER = re.compile(r"-?(?:[0-9]{1,60}(?:\.[0-9]{1,60})?|\.[0-9]{1,60})")
_CURRENCY = "$\u20ac\u00a3\u00a5\u20b9"


def gsm8k_answer(text: str) -> str | None:
    """The final answer of a `#### ...` line: the text after the last `####` to the end of that
    line, read whole (None when there is no marker or nothing after it).

    Tidied, nothing more: spaces, a closing full stop, `**bold**` or `$...$` around the whole
    answer, a leading currency sign (`$18`), a trailing `%`, thousands commas in a plain number
    (`1,234` -> `1234`) and one trailing unit word of two or more letters after a space
    (`18 dollars`). What is left is graded whole: `12/5` is 12/5, `12 apples and 3` is no number.
    Linear-time: a scan of one line, and anchored regexes without nested quantifiers."""
    i = text.rfind("####")
    if i < 0:
        return None
    line = text[i + 4:]
    nl = line.find("\n")
    s = (line if nl < 0 else line[:nl]).strip()
    for left, right in (("**", "**"), ("$", "$"), ("\\(", "\\)")):
        if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left):-len(right)].strip()
    while s.endswith("."):
        s = s[:-1].rstrip()
    parts = s.rsplit(None, 1)
    if len(parts) == 2 and len(parts[1]) >= 2 and parts[1].isalpha():
        s = parts[0].rstrip()  # "18 dollars"
    if s[:1] in _CURRENCY and s:
        s = s[1:].lstrip()
    elif s[:1] == "-" and s[1:2] in _CURRENCY and s[1:2]:
        s = "-" + s[2:].lstrip()
    if s.endswith("%"):
        s = s[:-1].rstrip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s or None


def is_plain_number(s: str) -> bool:
    """`12`, `-3`, `0.5`, `.5`: a number no parser is needed for."""
    return _PLAIN_NUMBER.fullmatch(s) is not None


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
