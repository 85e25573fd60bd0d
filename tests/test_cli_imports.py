"""What the command line imports: its help stays light, and OpenCV always loads before PyAV.

Run in fresh interpreters: the test process itself has imported everything long before.
(How fast `--help` is, is measured in benchmarks/README.md, not asserted here.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "cv2", "av", "matplotlib", "numpy", "aiohttp", "PIL", "huggingface_hub", "controlnet_aux")


def python(code: str) -> str:
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_help_and_version_import_no_heavy_library():
    """`streamer --help`, `--version` and every command's --help: click, pydantic and YAML, no more."""
    code = f"""
import contextlib, io, sys
from streamer.cli.main import Group, cli, main
commands = Group.list_commands(cli, None)
for args in (["--help"], ["--version"], *[[c, "--help"] for c in commands]):
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0, args
print(len(commands), *[name for name in {HEAVY!r} if name in sys.modules])
"""
    count, *loaded = python(code).split()
    assert int(count) >= 8
    assert loaded == []


def test_the_help_of_the_installed_entry_point_is_light():
    """`python -m streamer --help`, through __main__ as the console script runs it."""
    code = """
import runpy, sys
sys.argv = ["streamer", "--help"]
try:
    runpy.run_module("streamer", run_name="__main__")
except SystemExit as exit:
    assert exit.code == 0, exit.code
print("torch" in sys.modules, "cv2" in sys.modules, "av" in sys.modules)
"""
    assert python(code).split()[-3:] == ["False", "False", "False"]


@pytest.mark.parametrize(
    "imports",
    [
        "import streamer.sources",  # sources/__init__ reaches the PyAV source before the OpenCV camera
        "import streamer.sources.video",
        "import streamer.sinks.video",
        "import streamer, av",  # a user's script that imports PyAV itself after streamer
        "from streamer import open_source",
    ],
)
def test_opencv_is_loaded_before_pyav(imports):
    """Both wheels bundle libxcb; PyAV's copy first makes OpenCV's window hang (streamer/__init__.py)."""
    order = python(f"import sys\n{imports}\nnames = list(sys.modules)\nprint(names.index('cv2'), names.index('av'))")
    cv2_at, av_at = map(int, order.split())
    assert cv2_at < av_at


def test_the_lazy_api_names_resolve():
    code = """
import streamer
names = [n for n in streamer.__all__ if n != "__version__"]
print(len(names), all(callable(getattr(streamer, n)) for n in names), streamer.__version__)
"""
    count, resolved, version = python(code).split()
    assert int(count) >= 12 and resolved == "True" and version.count(".") == 2


def test_the_command_leaves_after_the_exit_handlers_without_tearing_modules_down():
    """streamer/cli/entry.py: the command's exit code and output stay; a handler registered while it
    ran (a temporary folder's removal, Ray's shutdown) still runs; module teardown is skipped."""
    code = """
import atexit, os, sys
import streamer.cli.main as cli_main
from streamer.cli import entry

class Teardown:
    def __del__(self, write=os.write):  # late in teardown sys.stdout is gone: the file descriptor
        write(1, b" modules torn down")

kept = Teardown()  # a module global: the interpreter's teardown would delete it

def command():
    atexit.register(print, "late handler ran")
    print("command ran", end=" ")
    return 3

cli_main.main = command
entry.run()
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr[-2000:]
    assert run.stdout.split() == ["command", "ran", "late", "handler", "ran"], run.stdout
