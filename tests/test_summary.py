"""The run's last line: what the outputs hold, over the run's time."""

from __future__ import annotations

import cv2  # noqa: F401  (before av: see streamer/__init__.py)

import json
import re

import av
import numpy as np
import pytest

from streamer import api
from streamer.cli.main import main
from streamer.cli.running import run
from streamer.config import load_config
from streamer.errors import StopRequested
from streamer.sinks.base import Sink
from streamer.sources import PatternSource

SUMMARY = re.compile(r"done(?: \(stopped\))?: (\d+) (\w+?)s? in ([\d.]+) s \(([\d.e+]+) \w+/s\), latency p50 (\d+) ms")


def summary(err: str) -> tuple[int, float, float, float]:
    """(count, seconds, rate, latency p50 in seconds) from the 'done: ...' line."""
    line = next(line for line in err.splitlines() if line.startswith("done"))
    match = SUMMARY.match(line)
    assert match, line
    count, _, seconds, rate, p50 = match.groups()
    return int(count), float(seconds), float(rate), int(p50) / 1000


@pytest.mark.parametrize("images", [1, 2])
def test_the_rate_of_a_few_stills_is_their_count_over_the_run(tmp_path, capsys, images):
    """One image once said 0.0 fps; two, from one batch, 1076 fps beside a 654 ms latency."""
    paths = []
    for i in range(images):
        paths.append(tmp_path / f"p{i}.png")
        cv2.imwrite(str(paths[-1]), np.full((48, 64, 3), 40 * i, np.uint8))
    args = ["depth", *map(str, paths), "-o", str(tmp_path / "out"), "--processor", "null", "--device", "cpu"]
    args += ["--batch-size", "2"]
    assert main(args) == 0
    count, seconds, rate, p50 = summary(capsys.readouterr().err)
    assert count == images
    assert count / (seconds + 0.005) <= rate <= count / max(seconds - 0.005, 1e-6)  # seconds printed to 0.01
    assert seconds >= p50  # no image is out before its own latency has passed


class KeyStop(Sink):
    """A person's stop after `frames` frames, as the preview window's q key raises it."""

    name = "keys"
    needs = frozenset({"depth"})

    def __init__(self, frames: int) -> None:
        self.frames, self.seen = frames, 0

    def write(self, result) -> None:
        self.seen += 1
        if self.seen == self.frames:
            raise StopRequested


def test_the_count_is_what_the_file_holds_when_a_window_stops_the_run(tmp_path, capsys):
    """The engine counts a frame when the first sink took it; q in the window is raised on a frame
    the recording behind it still writes: the summary once said 262 where the file held 263."""
    cfg = load_config(None, {"model": {"processor": "null", "device": "cpu"}, "output": {"format": "gray"}})
    out = tmp_path / "rec.mkv"
    sinks = [KeyStop(5), api.file_sink(cfg, out)]
    run(cfg, sinks, PatternSource("testsrc:64x48@30", frames=60))
    count = int(re.search(r"^done \(stopped\): (\d+) ", capsys.readouterr().err, re.M).group(1))
    with av.open(str(out)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert count == decoded == sidecar["frames"] >= 5
