"""The dependency floors CI installs (.ci/lowest_constraints.py) are pyproject.toml's, one for one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml itself (CI runs 3.11)")

REPO = Path(__file__).resolve().parent.parent


def test_lowest_constraints_pin_every_library_to_its_floor():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    run = subprocess.run(
        [sys.executable, str(REPO / ".ci" / "lowest_constraints.py")], capture_output=True, text=True, check=True
    )
    pins = dict(line.split("==") for line in run.stdout.split())
    wanted = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    for dependency in wanted:
        name, floor = re.fullmatch(r"([\w.-]+)>=(\S+)", dependency).groups()
        if name not in ("pytest", "pytest-timeout", "ruff", "selenium"):  # test tools run at their newest
            assert pins[name] == floor, dependency
    assert "torch" in pins and "opencv-python" in pins
