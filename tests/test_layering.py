"""The data-flow rules of the design hold: the model knows no video, sources and sinks no torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "streamer"
RULES = {"models": {"av", "cv2"}, "sources": {"torch"}, "sinks": {"torch"}}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package,forbidden", sorted(RULES.items()))
def test_layer_imports(package, forbidden):
    for path in (PACKAGE / package).rglob("*.py"):
        assert not imported_roots(path) & forbidden, (
            f"{path.relative_to(PACKAGE)} imports {imported_roots(path) & forbidden}"
        )


def test_only_the_engine_starts_threads():
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name != "engine":
            assert "threading.Thread(" not in path.read_text(), path
