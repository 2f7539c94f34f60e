"""The package's layout holds: imports point one way down the stages (docs/development.md),
no import cycles, no underscore name imported across modules, zarr only in the store, the
readers of a run (results/, present/) import nothing that runs a model or opens a dataset,
and no module grows past the size a reader takes in at once."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "python" / "sketchmine"
STAGES = ["root", "data", "model", "store", "stats", "results", "mining", "passes", "present", "cli"]
"""Lowest first: a module may import its own stage and the stages before it."""
MAX_LINES = 400


def _name(f: Path) -> str:
    parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(f): f for f in PKG.rglob("*.py")}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PKG / parts[1]).is_dir() else "root"


def _imports(f: Path) -> list[tuple[str, str]]:
    """(module imported, name imported or "") of every sketchmine import in `f`, lazy imports
    included, annotation-only imports (under `if TYPE_CHECKING:`) not."""
    tree = ast.parse(f.read_text())
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "zarr":
            out.append((node.module, ""))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sketchmine":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.append((full, "") if full in MODULES else (node.module, a.name))
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.split(".")[0] in ("sketchmine", "zarr")]
    return out


GRAPH = {m: {i for i, _ in _imports(f) if i in MODULES and i != m} for m, f in MODULES.items()}


def test_imports_point_one_way_down_the_stages():
    upward = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps
                    if m != "sketchmine.__main__" and STAGES.index(_stage(d)) > STAGES.index(_stage(m)))
    assert upward == []


def test_no_import_cycles():
    cycles = []
    for start in GRAPH:
        seen, todo = set(), list(GRAPH[start])
        while todo:
            m = todo.pop()
            if m == start:
                cycles.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo.extend(GRAPH.get(m, ()))
    assert cycles == []


def test_no_underscore_name_crosses_modules():
    private = sorted(f"{m} imports {mod}.{name}" for m, f in MODULES.items() for mod, name in _imports(f)
                     if name.startswith("_") and name not in ("_C", "__version__"))
    assert private == []


def test_only_the_store_imports_zarr():
    assert sorted(m for m, f in MODULES.items() for mod, _ in _imports(f)
                  if mod.split(".")[0] == "zarr" and _stage(m) != "store") == []


def test_the_docs_name_the_modules_that_import_zarr():
    """docs/store.md and docs/development.md name the store modules that import zarr: the two
    pages named other lists (and each a module that did not)."""
    importing = {m.rsplit(".", 1)[1] for m, f in MODULES.items() for mod, _ in _imports(f) if mod.split(".")[0] == "zarr"}
    docs = Path(__file__).resolve().parents[1] / "docs"
    store = " ".join((docs / "store.md").read_text().split())
    named = re.search(r"the store modules (.+?) are the only code that imports Zarr", store)
    assert named and set(re.findall(r"`(\w+)\.py`", named.group(1))) == importing
    dev = " ".join((docs / "development.md").read_text().split())
    named = re.search(r"of them only (.+?) import zarr", dev)
    assert named and set(re.findall(r"`(\w+)`", named.group(1))) == importing


def test_readers_of_a_run_need_no_model_and_no_dataset():
    """results/ and present/ only read the store: `sketchmine report` works without the model
    or the dataset at hand."""
    needs = {"model", "mining", "passes", "data"}
    assert sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if _stage(m) in ("results", "present")
                  for d in deps if _stage(d) in needs) == []


def test_no_module_is_longer_than_a_reader_takes_in():
    assert {m: n for m, f in MODULES.items() if (n := len(f.read_text().splitlines())) > MAX_LINES} == {}


def test_the_layout_table_names_every_module():
    """docs/development.md's Layout names every module of each folder (its table) and of the
    root (the paragraph above it): a module added without a word there is missed by a reader
    looking for where a thing lives (the table had fallen dozens of modules behind)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "development.md").read_text()
    layout = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)/` [^|]*\| (.*) \|$", layout, re.M))
    rows["root"] = layout.split("| folder |", 1)[0]
    unnamed = {}
    for m, f in MODULES.items():
        parts = m.split(".")
        if f.name in ("__init__.py", "__main__.py"):
            continue
        folder = _stage(m)
        if parts[-1] not in set(re.findall(r"`(\w+)`", rows.get(folder, ""))):
            unnamed.setdefault(folder, []).append(parts[-1])
    assert unnamed == {}
