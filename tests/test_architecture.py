"""The package's shape: every import runs down the layers, no cycles, no file too long to read."""
import ast
from pathlib import Path

import oreal

ROOT = Path(oreal.__file__).parent
# Each top-level module or package of oreal, by layer: a module may import only from lower layers
# (and from inside its own package). Leaf utilities at 0; the command line on top.
LAYERS = {
    "errors": 0, "faults": 0, "extract": 0,
    "optim": 0, "distributed": 0,
    "config": 1, "verify": 1, "models": 1, "plots": 1,
    "checkpoint": 1, "preflight": 1,
    "data": 2, "algo": 2, "rollout": 2, "tracking": 2,
    "evaluation": 3,
    "training": 4,
    "report": 5, "plan": 5,  # plan: its probe runs training.logprobs in a child process
    "recipes": 6,
    "cli": 7,
}


def _unit(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """The top-level oreal units a file imports (lazy imports inside functions included)."""
    module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
    pkg = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                names = [name] if node.module else [f"{name}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for n in names:
            parts = n.split(".")
            if parts[0] == "oreal" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_every_import_runs_down_the_layers():
    files = sorted(ROOT.rglob("*.py"))
    assert {_unit(f) for f in files} - {"__init__"} <= set(LAYERS), "a new module needs a layer"
    bad = []
    for f in files:
        unit = _unit(f)
        if unit == "__init__":
            continue
        for dep in _imports(f) - {unit}:
            if LAYERS[dep] >= LAYERS[unit]:
                bad.append(f"{f.relative_to(ROOT)} (layer {LAYERS[unit]}) imports {dep} (layer {LAYERS[dep]})")
    assert not bad, "\n".join(bad)


def test_data_layer_runs_no_policy():
    for f in (ROOT / "data").rglob("*.py"):
        assert not _imports(f) & {"models", "rollout", "verify", "evaluation", "training", "recipes"}, f


def test_no_file_over_500_lines():
    long = {str(f.relative_to(ROOT)): n for f in ROOT.rglob("*.py") if (n := len(f.read_text().splitlines())) > 500}
    assert not long, long
