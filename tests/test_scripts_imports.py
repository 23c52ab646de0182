"""Benchmarks and cluster recipes import what exists: every ``from wsi_mil... import name`` in
``benchmarks/`` and ``pipelines/`` (function-level ones and code passed to subprocesses in
strings included) names a real module and attribute, so a moved module cannot break them
unseen (they are not run by the default suite)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("pipelines/*.py")])
IN_STRING = re.compile(r"from (wsi_mil[\w.]*) import ([\w, ]+)")


def wsi_mil_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from wsi_mil... import name`` in a script, strings included."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wsi_mil"):
            found += [(node.module or "", a.name) for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for mod, names in IN_STRING.findall(node.value):
                found += [(mod, n.strip()) for n in names.split(",") if n.strip()]
    return found


def test_finder_sees_string_code(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text('def f():\n    from wsi_mil.jobdir import status_path\nCODE = "from wsi_mil.x import a, b\\n"\n')
    assert wsi_mil_imports(script) == [("wsi_mil.jobdir", "status_path"), ("wsi_mil.x", "a"), ("wsi_mil.x", "b")]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_imports_exist(script: Path) -> None:
    missing = []
    for module, name in wsi_mil_imports(script):
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{module}: {exc}")
            continue
        if not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{module}.{name}")
    assert missing == []
