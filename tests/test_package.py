"""The package's shape: no import cycles, light config modules, one reader path, typed package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import wsi_mil

PACKAGE = Path(wsi_mil.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """wsi_mil modules that ``module`` imports anywhere (functions included), TYPE_CHECKING aside."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts if is_package else parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known}


def import_graph() -> dict[str, set[str]]:
    """module -> the wsi_mil modules it imports."""
    mods = _modules()
    known = set(mods)
    return {m: _imports(ast.parse(p.read_text(encoding="utf-8")), m, p.name == "__init__.py", known) - {m}
            for m, p in mods.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "wsi_mil.tiling.stage" in graph
    assert "wsi_mil.jobdir" in graph["wsi_mil.tiling.stage"]  # the walker sees real edges
    assert strongly_connected(graph) == []


def _loaded_after(statement: str) -> set[str]:
    code = (f"import sys; {statement}; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


HEAVY = {"torch", "timm", "torchvision", "matplotlib", "sklearn", "h5py", "zarr", "dask", "distributed"}


@pytest.mark.parametrize("module", ["wsi_mil.study", "wsi_mil.config", "wsi_mil.tiling.config",
                                    "wsi_mil.extract.config", "wsi_mil.ssl.config", "wsi_mil.mil.config",
                                    "wsi_mil.heatmaps.config", "wsi_mil.jobdir"])
def test_config_modules_do_not_load_heavy_libraries(module: str) -> None:
    assert not (_loaded_after(f"import {module}") & HEAVY)


def test_every_stage_package_has_config_and_stage() -> None:
    for pkg in ("tiling", "ssl", "extract", "mil", "heatmaps"):
        assert (PACKAGE / pkg / "config.py").is_file() and (PACKAGE / pkg / "stage.py").is_file(), pkg


def test_slides_are_opened_through_one_reader() -> None:
    """Only wsi_mil.slide imports openslide: every other module reads slides through open_slide."""
    graph_free = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "slide.py" and path.parent == PACKAGE:
            continue
        text = path.read_text(encoding="utf-8")
        if "import openslide" in text or "__import__('openslide')" in text or 'from openslide' in text:
            graph_free.append(str(path.relative_to(PACKAGE)))
    assert graph_free == []


def test_package_is_typed() -> None:
    assert (PACKAGE / "py.typed").is_file()
