"""Load problems from JSONL, JSON, Parquet, CSV, or Hugging Face datasets, via field presets.

A preset says which fields hold the question, the gold answer and the id, and how to turn a
raw gold value into the verifier's gold string. Bad rows raise `DataError` naming the file,
the line or row and the field; `skip_bad=True` instead skips them and reports which. A field
name may read a nested mapping (`reward_model.ground_truth`) or the first present of several
columns (`solution|answer|ground_truth`). With no preset named, TRL's and veRL's formats are
recognised by their first row (`detect_preset`), with a one-line notice.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..extract import boxed_answers
from .records import DataError, Problem


def _number_gold(v) -> str:
    """27.0 -> '27', 3.5 -> '3.5', '025' -> '25' (AIME pads with zeros)."""
    if isinstance(v, bool):
        raise TypeError("a boolean is not an answer")
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            raise TypeError("answer is not a finite number")
        return str(int(v)) if float(v).is_integer() else repr(v)
    if isinstance(v, str):
        s = v.strip()
        if s.isdigit():
            return str(int(s))
        try:
            return _number_gold(float(s))
        except ValueError:
            return s
    raise TypeError(f"expected a number or string, got {type(v).__name__}")


def _string_gold(v) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return _number_gold(v)
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _gsm8k_gold(v) -> str:
    if not isinstance(v, str) or "####" not in v:
        raise TypeError("expected a GSM8K answer ending in '#### N'")
    return v.rsplit("####", 1)[1].strip().replace(",", "")


def _list_gold(v) -> str:
    """OlympiadBench keeps answers as a list of LaTeX strings; several answers join with commas."""
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        raise TypeError("expected a non-empty list of strings")
    # Elements are LaTeX with math delimiters, sometimes several answers in one: "$69$,$84$".
    return ", ".join(x.replace("$", "").strip().rstrip(".").strip() for x in v)


def _solution_gold(v) -> str:
    """TRL's answer columns: a number, an answer, or a worked solution whose last \\boxed{} is the answer."""
    if isinstance(v, str) and (boxes := boxed_answers(v)):
        return boxes[-1]
    return _string_gold(v)


def _any_gold(v) -> str:
    """veRL's `reward_model.ground_truth`: a string or number as it is, anything else (a list, a dict
    of test cases) as JSON; a veRL `compute_score` gets the value itself, from `Problem.fields`."""
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        return _string_gold(v)
    return json.dumps(v, ensure_ascii=False, sort_keys=True)


def _last_boxed_gold(v) -> str:
    if not isinstance(v, str):
        raise TypeError("expected a solution string")
    boxes = boxed_answers(v)
    if not boxes:
        raise TypeError("solution has no \\boxed{} answer")
    return boxes[-1]


@dataclass(frozen=True)
class Preset:
    question: str
    answer: str
    id: str | None = None
    gold: Callable = _string_gold
    extract: str = "boxed"  # the verifier mode for this data's *model* responses
    extra: dict = field(default_factory=dict)  # record field -> source field (level, subject, ...)
    keep_columns: bool = True  # the row's other columns go to `Problem.fields` (reward functions read them)


PRESETS: dict[str, Preset] = {
    "math": Preset("problem", "answer", "unique_id", extra={"level": "level", "subject": "subject",
                                                            "solution": "solution"}),
    "gsm8k": Preset("question", "answer", None, _gsm8k_gold),
    "aime24": Preset("problem", "answer", "id", _number_gold),
    "aime25": Preset("problem", "answer", "id", _number_gold),
    "amc23": Preset("question", "answer", "id", _number_gold),
    "olympiadbench": Preset("question", "final_answer", "id", _list_gold,
                            extra={"subject": "subfield"}),
    "minerva": Preset("problem", "solution", "idx", _last_boxed_gold, extra={"subject": "type"}),
    "oreal": Preset("question", "gold_answer", "id", _string_gold, extra={"pass_rate": "pass_rate"}),
    "oreal_records": Preset("question", "gold", "id", _string_gold,
                            extra={"pass_rate": "pass_rate", "level": "level", "subject": "subject",
                                   "skills": "skills", "solution": "solution", "source": "source",
                                   "extract": "extract", "messages": "messages", "fields": "fields"},
                            keep_columns=False),
    # TRL's prompt-only format: `prompt` a string or a list of messages, the answer in one of three columns
    "trl": Preset("prompt", "solution|answer|ground_truth", None, _solution_gold, "auto"),
    # veRL's RL parquet: `prompt` messages, `reward_model: {ground_truth, ...}`, `data_source`, `extra_info`
    "verl": Preset("prompt", "reward_model.ground_truth", None, _any_gold, "auto"),
}
# What `detect_preset` says it found, in the one-line notice.
DETECTED = {"verl": "veRL's RL format (data_source, prompt messages, reward_model.ground_truth)",
            "trl": "TRL's prompt-only format (prompt; solution, answer or ground_truth)"}


def _get(row: dict, key: str):
    """The value of `key` in a row (None where missing): a column, else `a.b` read through nested
    mappings, and `a|b|c` the first of several that is present."""
    for alt in key.split("|"):
        v = row.get(alt)
        if v is None and "." in alt:
            v = row
            for part in alt.split("."):
                v = v.get(part) if isinstance(v, dict) else None
        if v is not None:
            return v
    return None


def _names(key: str) -> str:
    """A field name for a message: 'solution', 'answer' or 'ground_truth' for `solution|answer|ground_truth`."""
    alts = [repr(a) for a in key.split("|")]
    return alts[0] if len(alts) == 1 else f"{', '.join(alts[:-1])} or {alts[-1]}"


def detect_preset(row) -> str | None:
    """`verl` or `trl` when a row is in veRL's or TRL's format (a `prompt`, and veRL's nested
    `reward_model.ground_truth` or one of TRL's answer columns); None otherwise."""
    if not isinstance(row, dict) or row.get("prompt") is None:
        return None
    if isinstance(row.get("reward_model"), dict) and "ground_truth" in row["reward_model"]:
        return "verl"
    return "trl" if _get(row, PRESETS["trl"].answer) is not None else None


def _messages(v) -> list[dict]:
    """A conversational prompt as given: a non-empty list of messages, each with a role and text content."""
    if not isinstance(v, list) or not v:
        raise TypeError("expected a string or a non-empty list of messages")
    for m in v:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError("expected messages as {'role': ..., 'content': text}")
    return [dict(m) for m in v]


def _last_user(messages: list[dict]) -> str:
    """The question of a conversation: its last user message (else its last message)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])


def _rows(path: Path) -> Iterator[tuple[str, object]]:
    """(location, raw row) pairs; location is 'line N' or 'row N'."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield f"line {n}", DataError(f"undecodable bytes ({e.reason} at byte {e.start})")
                    continue
                try:
                    yield f"line {n}", json.loads(text)
                except json.JSONDecodeError as e:
                    yield f"line {n}", DataError(f"malformed JSON ({e.msg} at column {e.colno})")
    elif suffix == ".json":
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: malformed JSON file ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records (or {{'data': [...]}})")
        for n, row in enumerate(data):
            yield f"record {n}", row
    elif suffix == ".csv":
        try:
            with open(path, newline="", encoding="utf-8") as f:
                for n, row in enumerate(csv.DictReader(f), 2):  # row 1 is the header
                    yield f"row {n}", row
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: undecodable bytes ({e.reason})") from None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for n, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"row {n}", row
    else:
        raise DataError(f"{path}: unknown file type {suffix!r} (use .jsonl, .json, .csv or .parquet)")


def _hf_rows(name: str, split: str | None) -> Iterator[tuple[str, object]]:
    import datasets

    p = Path(name)
    try:
        ds = datasets.load_from_disk(str(p)) if p.is_dir() else datasets.load_dataset(name)
    except (ConnectionError, OSError, ValueError) as e:  # offline hub, no such dataset, not a dataset
        raise DataError(f"{name}: no such file, and not loadable as a Hugging Face dataset "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(ds, datasets.DatasetDict):
        split = split or ("train" if "train" in ds else next(iter(ds)))
        ds = ds[split]
    for n, row in enumerate(ds):
        yield f"row {n}", row


@dataclass
class LoadResult:
    problems: list[Problem]
    skipped: list[str]  # "file: line N: field: why" for each skipped row


def load_problems(source: str | Path, preset: str | Preset | None = "oreal_records", *,
                  fields: dict[str, str] | None = None, split: str | None = None,
                  skip_bad: bool = False, source_name: str | None = None,
                  extract: str | None = None, fallback: str = "oreal_records") -> LoadResult:
    """Load problems from a file, a Hugging Face dataset (saved directory or hub name), or rows
    already in memory (a `datasets.Dataset` or a list of dicts).

    `preset=None`: TRL's or veRL's format where the first row is in one (`detect_preset`, with a
    one-line notice on stderr), else `fallback`. `fields` overrides the preset's field names:
    keys `question`, `answer`, `id`, or any record field (`level`, `subject`, `pass_rate`,
    `skills`, `solution`).
    """
    if isinstance(preset, str) and preset not in PRESETS:
        raise DataError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if not isinstance(source, (str, Path)):  # rows in memory: a datasets.Dataset, or a list of dicts
        if not hasattr(source, "__iter__"):
            raise DataError(f"expected a path, a datasets.Dataset or a list of dicts, got {type(source).__name__}")
        where = source_name = source_name or type(source).__name__
        rows = ((f"row {n}", row) for n, row in enumerate(source))
        path = Path(where)
    elif (path := Path(source)).is_file():
        rows, where = _rows(path), str(path)
    elif path.is_dir() or not path.suffix:
        rows, where = _hf_rows(str(source), split), str(source)
    else:
        raise DataError(f"{path}: no such file")
    if preset is None:  # the first row says whether this is TRL's or veRL's format
        first = next(rows, None)
        rows = itertools.chain([first] if first is not None else [], rows)
        found = detect_preset(first[1]) if first is not None else None
        if found:
            print(f"data: {where} is in {DETECTED[found]}: preset {found} (data_preset= or --preset "
                  f"chooses another)", file=sys.stderr)
        preset = found or fallback
    preset = PRESETS[preset] if isinstance(preset, str) else preset
    fields = dict(fields or {})
    q_key = fields.pop("question", preset.question)
    a_key = fields.pop("answer", preset.answer)
    id_key = fields.pop("id", preset.id)
    extra = dict(preset.extra, **fields)
    name = source_name or path.stem
    problems, skipped, ids = [], [], {}
    for loc, row in rows:
        try:
            problems.append(_to_problem(row, loc, q_key, a_key, id_key, extra, preset, name, ids,
                                        extract or preset.extract))
        except DataError as e:
            msg = f"{where}: {loc}: {e}"
            if not skip_bad:
                raise DataError(msg) from None
            skipped.append(msg)
    if not problems and not skipped:
        raise DataError(f"{where}: no records")
    return LoadResult(problems, skipped)


def _preset_hint(row: dict) -> str:
    """' (its fields fit the oreal preset: ...)' when another preset reads this row, in the words of
    both the config (`data_preset=`) and the commands' flag (`--preset`)."""
    fits = [name for name, p in PRESETS.items()
            if _get(row, p.question) is not None and _get(row, p.answer) is not None]
    names = " / ".join(fits)
    return f" (its fields fit the {names} preset: data_preset={fits[0]}, or --preset {fits[0]})" if fits else ""


def _to_problem(row, loc, q_key, a_key, id_key, extra, preset, name, ids, extract) -> Problem:
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, dict):
        raise DataError(f"expected an object, got {type(row).__name__}")
    q = _get(row, q_key)
    if q is None:
        raise DataError(f"field {_names(q_key)}: missing{_preset_hint(row)}")
    messages = None
    if isinstance(q, list):  # a conversational prompt
        try:
            messages = _messages(q)
        except TypeError as e:
            raise DataError(f"field {_names(q_key)}: {e}") from None
        q = _last_user(messages)
    if not isinstance(q, str):
        raise DataError(f"field {_names(q_key)}: expected a string, got {type(q).__name__}")
    if not q.strip():
        raise DataError(f"field {_names(q_key)}: empty")
    answer = _get(row, a_key)
    if answer is None:
        raise DataError(f"field {_names(a_key)}: missing{_preset_hint(row)}")
    try:
        gold = preset.gold(answer)
    except TypeError as e:
        raise DataError(f"field {_names(a_key)}: {e}") from None
    if not gold.strip():
        raise DataError(f"field {_names(a_key)}: empty")
    pid = row.get(id_key) if id_key else None
    pid = f"{name}-{len(ids)}" if pid is None or pid == "" else str(pid)
    if pid in ids:
        raise DataError(f"field {id_key!r}: duplicate id {pid!r} (first at {ids[pid]})")
    ids[pid] = loc
    p = Problem(id=pid, question=q, gold=gold, source=name, extract=extract, messages=messages)
    if preset.keep_columns:  # every column but the prompt, as TRL passes them to reward functions
        top = {k.split(".")[0] for k in q_key.split("|")}
        p.fields = {k: v for k, v in row.items() if k not in top}
    for attr, key in extra.items():
        v = row.get(key)
        if v is None or v == "" or v == {}:
            continue
        if attr == "fields":
            if not isinstance(v, dict):
                raise DataError(f"field {key!r}: expected a mapping of columns")
        elif attr == "messages":
            try:
                v = _messages(v)
            except TypeError as e:
                raise DataError(f"field {key!r}: {e}") from None
        elif attr == "pass_rate":
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise DataError(f"field {key!r}: expected a number in [0, 1]") from None
            if not 0.0 <= v <= 1.0:
                raise DataError(f"field {key!r}: expected a number in [0, 1], got {v}")
        elif attr == "skills":
            if isinstance(v, str):
                v = [s for s in v.split(",") if s]
            if not isinstance(v, list):
                raise DataError(f"field {key!r}: expected a list of strings")
            v = [str(s) for s in v]
        else:
            v = str(v)
        setattr(p, attr, v)
    return p


def save_problems(problems: list[Problem], path: str | Path) -> None:
    """JSONL in the `oreal_records` preset's format (lossless round trip); missing directories
    of `path` are made."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
