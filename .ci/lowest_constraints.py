"""Print pip constraints that pin every dependency of pyproject.toml to its floor (`name==floor`).

CI installs with them into a second environment and runs the same tests, so each floor is a
version that was installed and tested, not a guess. The extras' libraries (Ray, rerun-sdk,
plyfile) are pinned too; the test tools (pytest, ruff, selenium) are not: users do not install
them, and left free pip also does not walk back through dozens of releases of other packages to
fit them. A dependency without a plain `>=` floor is an error here: it would have nothing to pin.
Needs Python 3.11+ (tomllib), as CI runs.
"""

import re
import sys
from pathlib import Path

import tomllib

TOOLS = {"pytest", "pytest-timeout", "ruff", "selenium"}
FLOOR = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][^,;\s]*)\s*")


def main() -> int:
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    extras = [d for group in project.get("optional-dependencies", {}).values() for d in group]
    floors: dict[str, str] = {}
    for dependency in [*project["dependencies"], *extras]:
        match = FLOOR.fullmatch(dependency)
        if match is None:
            print(f"pyproject.toml: {dependency!r} has no plain >= floor to pin", file=sys.stderr)
            return 1
        if match[1].lower() not in TOOLS:
            floors.setdefault(match[1], match[2])
    print("\n".join(f"{name}=={floor}" for name, floor in floors.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
