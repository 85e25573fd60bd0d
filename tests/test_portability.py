"""Windows and macOS users run OBS: nothing Unix-only at import time, and signals work as users expect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import TINY_INPUT, write_video

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ["preview", "transcode", "virtualcam", "serve", "depth", "bench", "doctor"]
UNIX_ONLY = ("resource", "fcntl", "termios")


def test_every_module_and_help_imports_without_unix_only_modules():
    code = f"""
import sys
for name in {UNIX_ONLY!r}:
    sys.modules[name] = None  # as on Windows: `import resource` raises ImportError
import importlib, pkgutil, streamer
for module in pkgutil.walk_packages(streamer.__path__, "streamer."):
    if module.name != "streamer.__main__":  # that one runs the CLI
        importlib.import_module(module.name)
from streamer.cli.main import main
for args in (["--help"], *[[c, "--help"] for c in {COMMANDS!r}]):
    assert main(args) == 0, args
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("ok")


def test_sigint_stops_a_run_even_when_inherited_as_ignored(tmp_path, checkpoint):
    """A background job of a script inherits SIGINT ignored; streamer installs its handler anyway."""
    src = write_video(tmp_path / "long.mkv", frames=400, codec="ffv1")
    out = tmp_path / "out.mkv"
    args = ["transcode", str(src), "-o", str(out), "--checkpoint", str(checkpoint)]
    args += ["--input-size", f"{TINY_INPUT[0]}x{TINY_INPUT[1]}", "--device", "cpu", "--runtime", "torch"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    partial = tmp_path / "out.partial.mkv"
    deadline = time.monotonic() + 120
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert partial.exists() and not out.exists()  # a file's interruption leaves .partial
