"""The figures the docs state as current carry the command and the date that produced them, and
none measured on the embedded policy predates its weights.

`docs/benchmarks.md`'s "At a glance" table is the list of current figures; the README repeats the
demo's and the ladder's. A rebuild of the embedded policy (`oreal/assets/default_model/recipe.json`
records its date) fails these tests until every figure on it is measured again or moved to
`docs/notebook.md`, the dated record of earlier runs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from oreal.models import default_model_dir

ROOT = Path(__file__).resolve().parents[1]
DATE = re.compile(r"\b(20\d\d-\d\d-\d\d)\b")
WEIGHTS_DATE = json.loads((default_model_dir() / "recipe.json").read_text())["date"]


def _glance_rows() -> list[dict]:
    text = (ROOT / "docs/benchmarks.md").read_text()
    section = text.split("## At a glance", 1)[1].split("\n## ", 1)[0]
    lines = [l for l in section.splitlines() if l.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == len(head), f"docs/benchmarks.md: a row with {len(cells)} cells: {line[:80]}"
        rows.append(dict(zip(head, cells)))
    return rows


def test_every_current_figure_has_its_command_and_date():
    rows = _glance_rows()
    assert len(rows) > 10
    for r in rows:
        assert "`" in r["command"], f"{r['benchmark']}: no command"
        assert DATE.fullmatch(r["measured"]) or r["figure"].startswith("not run"), \
            f"{r['benchmark']}: no date ({r['measured']!r})"


def test_no_figure_on_the_embedded_policy_predates_its_weights():
    """A row on the embedded policy is `yes` (current: dated on or after the weights), `no`, or
    says it is not current (`earlier weights: not rerun`)."""
    rows = _glance_rows()
    assert {r["on the embedded policy"] for r in rows} <= {"yes", "no", "earlier weights: not rerun"}
    stale = [f"{r['benchmark']} ({r['measured']})" for r in rows
             if r["on the embedded policy"] == "yes" and DATE.fullmatch(r["measured"])
             and r["measured"] < WEIGHTS_DATE]
    assert not stale, (f"measured on embedded weights older than {WEIGHTS_DATE}: {stale}; run them again "
                       f"or move them to docs/notebook.md")


def _paragraph_before(text: str, marker: str) -> str:
    """The paragraph that ends at the blank line above `marker` (a table's header)."""
    end = text.rfind("\n\n", 0, text.index(marker))
    return text[text.rfind("\n\n", 0, end):end]


def test_readme_demo_and_ladder_figures_are_dated_after_the_weights():
    readme = (ROOT / "README.md").read_text()
    demo = _paragraph_before(readme, "| seed | before | after | change |")
    ladder = readme[readme.index("python benchmarks/ladder.py") - 200:][:400]
    for name, text, command in (("demo table", demo, "oreal demo --seed S"),
                                ("ladder figures", ladder, "python benchmarks/ladder.py")):
        assert command in text, f"README's {name}: the command is not stated beside it"
        dates = DATE.findall(text)
        assert dates and max(dates) >= WEIGHTS_DATE, f"README's {name}: no date on or after {WEIGHTS_DATE}"


def test_readme_demo_mean_is_the_benchmarks_figure():
    readme = (ROOT / "README.md").read_text()
    mean = re.search(r"\*\*mean \(range\)\*\* \| \| \| \*\*([+-]\d+\.\d)\*\*", readme).group(1)
    row = next(r for r in _glance_rows() if r["benchmark"] == "the demo, 3 seeds")
    assert f"{mean} mean" in row["figure"], (mean, row["figure"])


def test_demo_config_states_dated_figures():
    text = (ROOT / "oreal/configs/demo.yaml").read_text()
    measured = re.search(r"# Measured \(3 seeds, 300 steps, (\S+)\)", text)
    assert measured and measured.group(1) >= WEIGHTS_DATE
