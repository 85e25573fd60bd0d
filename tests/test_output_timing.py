"""Output timelines read back exactly in every container (issue 21, items 7 and 11).

Matroska cannot start a stream before 0 unless told it may: AAC's priming packet (21 ms before
the first sample) made the muxer shift every stream, so each video frame of an `.mkv` came out
23 ms late while `.mp4`/`.mov` were exact. Frames of a variable-rate input must last until the
next one (not 1/average rate, which overlapped them and made ffmpeg warn about DTS). The video is
the first stream of every output, as players and tools expect.
"""

from __future__ import annotations

import cv2  # noqa: F401  (before av: see streamer/__init__.py)

import subprocess
from pathlib import Path

import pytest
from media_corpus import FFMPEG, FFPROBE, ffmpeg_available, plain_clip, probe, variable_rate

from streamer.cli.main import main

from conftest import missing_tool


@pytest.fixture(scope="module")
def ffmpeg_cli() -> None:
    missing = ffmpeg_available()
    if missing:
        missing_tool(f"these tests make and read files with the ffmpeg CLI: {missing}")


def transcode(src: Path, out: Path, capsys, *args: str) -> None:
    code = main(["transcode", str(src), "-o", str(out), "--processor", "null", "--device", "cpu", *args])
    assert code == 0, capsys.readouterr().err


def video_packets(path: Path) -> list[tuple[float, float]]:
    """(pts, duration) in seconds of each video packet, in presentation order."""
    cmd = [FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,duration_time"]
    rows = subprocess.run([*cmd, "-of", "csv=p=0", str(path)], capture_output=True, check=True, text=True).stdout
    return sorted(tuple(map(float, row.split(",")[:2])) for row in rows.split())


@pytest.mark.parametrize("suffix", [".mkv", ".mp4", ".mov", ".webm"])
def test_video_times_are_exact_with_aac_audio_in_every_container(suffix, ffmpeg_cli, tmp_path, capsys):
    src = plain_clip(tmp_path, size=(64, 48), rate=10, duration=1.0)
    out = tmp_path / f"out{suffix}"
    transcode(src, out, capsys, "--format", "gray")
    before, after = probe(src), probe(out)
    assert after.streams[0].kind == "video", f"stream 0 is {after.streams[0].kind}"
    assert after.video.start == pytest.approx(0, abs=1e-3), f"video starts at {after.video.start} s"
    got = [after.video.start + t for t in after.video.times]
    assert got == pytest.approx([before.video.start + t for t in before.video.times], abs=1e-3)
    assert after.audio, "audio lost"


@pytest.mark.parametrize("fmt", ["metric16", "gray"])
def test_variable_rate_frames_last_until_the_next_one(fmt, ffmpeg_cli, tmp_path, capsys):
    src = variable_rate(tmp_path, size=(64, 48), rate=30, duration=0.8, container="mkv")
    out = tmp_path / "depth.mkv"
    transcode(src, out, capsys, "--format", fmt)
    packets = video_packets(out)
    gaps = [b[0] - a[0] for a, b in zip(packets, packets[1:], strict=False)]
    durations = [d for _, d in packets[:-1]]
    assert durations == pytest.approx(gaps, abs=1.5e-3), f"durations {durations} for gaps {gaps}"
    done = subprocess.run([FFMPEG, "-v", "warning", "-i", str(out), "-f", "null", "-"], capture_output=True, text=True)
    assert "non monotonically" not in done.stderr and "onotonic" not in done.stderr, done.stderr
