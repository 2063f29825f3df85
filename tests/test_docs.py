"""The docs cite only names that exist (issue 41). In README.md and docs/*.md, every code span
(`...` in a paragraph, each line of a fenced block) is read for

(a) dotted paths `oreal.x.y`: an importable module, or an attribute of one;
(b) the Trainer's methods: `Trainer.name`, and the backticked names of a sentence that lists the
    Trainer's phases (`algo.select` there is the function of `oreal.algo`);
(c) config keys whose first part is a section of the training config (`algo.tau=0.5`,
    `sampling.max_new_tokens`): a key `oreal config show` prints;
(d) repository paths (`oreal/...`, `benchmarks/...`, `tests/...`, `docs/...`, `.ci/...`): they exist;
(e) `oreal COMMAND ... --flag`: the flag is one of that command's options.

Every stale name is reported at once, with its file and line. No model runs."""
import argparse
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# docs/notebook.md is a dated lab notebook: each entry records the commands and names of the day
# it was measured, and is not rewritten when a name changes
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "notebook.md")]
ALLOWED = {  # name: why a doc may cite it although it does not exist
    "optim.rm_lr": "the README and docs/status.md cite the key from before the credit rename as one that is now unknown",
}
FILE_SUFFIXES = (".json", ".jsonl", ".yaml", ".py", ".md", ".png", ".html", ".safetensors")


def code_spans(path: Path):
    """(line, code, sentence) of every code span: an inline span with the sentence around it, or
    a fenced block's line (its own sentence)."""
    para, fenced = [], False
    for no, line in enumerate(path.read_text().splitlines() + [""], 1):
        fence = line.lstrip().startswith("```")
        if fenced and not fence:
            yield no, line, line
        elif line.strip() and not fence:
            para.append((no, line))
        else:  # a blank line or a fence ends a paragraph
            yield from inline_spans(para)
            para = []
        fenced ^= fence


def inline_spans(para: list[tuple[int, str]]):
    """The `...` spans of a paragraph (one may run over a line break), each with its sentence."""
    text = "\n".join(t for _, t in para)
    for m in re.finditer(r"`([^`]+)`", text):
        start = max(text.rfind(". ", 0, m.start()), text.rfind(".\n", 0, m.start())) + 1
        end = min([i for i in (text.find(". ", m.end()), text.find(".\n", m.end())) if i >= 0], default=len(text))
        yield para[0][0] + text.count("\n", 0, m.start()), m.group(1).replace("\n", " "), text[start:end]


def resolves(dotted: str) -> bool:
    """`oreal.a.b.c`: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def config_keys() -> tuple[set[str], set[str]]:
    """Every dotted key of the training config, and its sections' names."""
    from oreal.config import describe
    from oreal.training.config import TrainConfig

    keys = {k for k, _ in describe(TrainConfig)}
    return keys, {k.split(".")[0] for k in keys if "." in k}


def commands() -> dict[str, argparse.ArgumentParser]:
    """`oreal` and every subcommand's parser by its words: "eval", "data show"."""
    from oreal.cli import build_parser

    out, todo = {}, [("", build_parser())]
    while todo:
        words, parser = todo.pop()
        out[words] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{words} {name}".strip(), sub) for name, sub in action.choices.items()]
    return out


def check_command(code: str, parsers: dict) -> list[str]:
    """The unknown flags of each `oreal COMMAND ...` (or `-m oreal.cli COMMAND`) in `code`."""
    words, problems = code.replace("\\|", " ").split(), []
    for i, w in enumerate(words):
        if not (w in ("oreal", "oreal.cli") or w.endswith("/oreal")) or i + 1 == len(words):
            continue
        name = ""
        for nxt in words[i + 1: i + 3]:
            if f"{name} {nxt}".strip() in parsers:
                name = f"{name} {nxt}".strip()
        if not name and not words[i + 1].startswith("--"):  # `oreal` in prose, not a command
            continue
        options = {o for a in parsers[name]._actions for o in a.option_strings}
        for arg in words[i + 1:]:
            if arg.startswith("#") or arg in ("|", "&&", ";"):
                break
            flag = arg.strip("[](),`'\"").split("=")[0]
            if flag.startswith("--") and len(flag) > 2 and flag not in options:
                problems.append(f"{('oreal ' + name).strip()}: no option {flag}")
    return problems


def problems_in(path: Path) -> list[str]:
    from oreal.recipes.train import Trainer
    import oreal.algo

    keys, sections = config_keys()
    parsers, out = commands(), []
    for line, code, sentence in code_spans(path):
        found = []
        for name in re.findall(r"(?<![\w/.-])oreal(?:\.\w+)+", code):  # (a)
            found += [] if resolves(name) else [f"{name}: not in the package"]
        for name in re.findall(r"(?<![\w.])Trainer\.(\w+)", code):  # (b)
            found += [] if hasattr(Trainer, name) else [f"Trainer.{name}: no such method"]
        if "Trainer" in sentence and re.search(r"\bphases\b", sentence, re.I):
            if re.fullmatch(r"[a-z_]+(\(\))?", code) and not hasattr(Trainer, code.rstrip("()")):
                found.append(f"{code}: cited as a Trainer phase, no such method")
            if code.startswith("algo.") and not hasattr(oreal.algo, code[5:]):
                found.append(f"{code}: cited as a Trainer phase, not in oreal.algo")
        for token in code.split():  # (c)
            key = token.strip("\"'`,;:()[]").split("=")[0]
            if (key.split(".")[0] in sections and "." in key and key not in keys and not key.endswith(("*", "."))
                    and not key.endswith(FILE_SUFFIXES)):
                found.append(f"{key}: not a config key")
        for p in re.findall(r"(?<![\w./-])((?:oreal|benchmarks|tests|docs|\.ci)/[\w./-]*)", code):  # (d)
            p = p.rstrip(".")
            found += [] if "*" in p or (ROOT / p).exists() else [f"{p}: no such file"]
        found += check_command(code, parsers)  # (e)
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        out += [f"{where}:{line}: {f}" for f in found if f.split(":")[0] not in ALLOWED]
    return out


def test_the_docs_cite_only_names_that_exist():
    problems = [p for doc in DOCS for p in problems_in(doc)]
    assert not problems, "stale names in the docs:\n" + "\n".join(problems)


def test_the_checker_finds_a_stale_name_of_each_kind(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("Phases of the Trainer: `draw`, `credit_update`.\n\n`oreal.models.token_scores`, "
                   "`Trainer.nope()`, `algo.nope=1`, `oreal/nope.py`, `oreal demo --k 0`, `oreal --nope`.\n\n"
                   "```bash\noreal eval --model default --bogus 1   # --also-not-checked\n```\n")
    got = problems_in(doc)
    assert got == ["doc.md:1: credit_update: cited as a Trainer phase, no such method",
                   "doc.md:3: oreal.models.token_scores: not in the package",
                   "doc.md:3: Trainer.nope: no such method", "doc.md:3: algo.nope: not a config key",
                   "doc.md:3: oreal/nope.py: no such file", "doc.md:3: oreal demo: no option --k",
                   "doc.md:3: oreal: no option --nope",
                   "doc.md:6: oreal eval: no option --bogus"], got
