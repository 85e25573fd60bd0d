"""A time range that keeps no frame is an error, never `done: 0 frames` with exit 0: an empty range
(start at or after end) is refused with the flags, before anything is opened; a start past the end
of the clip, or a range between two frames, is said once the file was read, with the clip's length."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamer.cli.main import main
from streamer.config import load_config
from streamer.errors import ConfigError

from conftest import write_video

NULL = ["--processor", "null", "--device", "cpu", "--threads", "1"]


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_video(tmp_path / "clip.mp4", frames=20, size=(64, 48), rate=10)  # 2 s


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", ["transcode", "batch"])
def test_an_empty_range_is_refused_before_anything_is_read(clip, tmp_path, capsys, command):
    out = tmp_path / ("out.mp4" if command == "transcode" else "out")
    assert main([command, str(clip), "-o", str(out), "--start", "1.5", "--end", "0.5", *NULL]) == 1
    line = error_line(capsys)
    assert "source.end" in line and "empty" in line and "end must be after start" in line
    assert not out.exists()
    with pytest.raises(ConfigError, match="empty"):
        load_config(None, {"source": {"start": 1.0, "end": 1.0}})


def test_a_start_past_the_end_says_the_clips_length(clip, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    assert main(["transcode", str(clip), "-o", str(out), "--start", "10", *NULL]) == 1
    line = error_line(capsys)
    assert "--start 10 s is past the end of clip.mp4 (2.00 s long)" in line
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_a_range_between_two_frames_holds_none(clip, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    assert main(["transcode", str(clip), "-o", str(out), "--start", "1.01", "--end", "1.05", *NULL]) == 1
    assert "no frames between 1.01 s and 1.05 s of clip.mp4 (2.00 s long)" in error_line(capsys)


def test_batch_reports_a_start_past_the_end_per_file(clip, tmp_path, capsys):
    short = write_video(tmp_path / "short.mp4", frames=5, size=(64, 48), rate=10)  # 0.5 s
    out = tmp_path / "out"
    assert main(["batch", str(clip), str(short), "-o", str(out), "--start", "1", *NULL]) == 1
    assert "1 of 2 inputs failed" in error_line(capsys)
    files = {f["relative"]: f for f in json.loads((out / "batch-report.json").read_text())["files"]}
    assert files["clip.mp4"]["status"] == "done" and files["clip.mp4"]["frames"] == 10
    assert files["short.mp4"]["status"] == "failed"
    assert "--start 1 s is past the end of short.mp4 (0.50 s long)" in files["short.mp4"]["reason"]
    assert not (out / "short.mp4").exists() and not (out / "short.json").exists()


def truncated_mkv(path: Path) -> Path:
    """A 3 s FFV1 .mkv cut mid-file: it declares 3 s, frames decode to about 1.6 s."""
    full = write_video(path.with_name("full.mkv"), frames=30, size=(64, 48), codec="ffv1")
    path.write_bytes(full.read_bytes()[: full.stat().st_size * 55 // 100])
    full.unlink()
    return path


def test_a_start_in_the_lost_part_of_a_damaged_file_blames_the_damage(tmp_path, capsys):
    cut = truncated_mkv(tmp_path / "cut.mkv")
    assert main(["transcode", str(cut), "-o", str(tmp_path / "out.mp4"), "--start", "2.5", *NULL]) == 1
    line = error_line(capsys)
    assert "cut.mkv is damaged" in line and "decoding ended at" in line, line
    assert "widen the range" not in line


def test_a_trimmed_run_of_a_damaged_file_reports_the_damage(tmp_path, capsys):
    cut = truncated_mkv(tmp_path / "cut.mkv")
    out = tmp_path / "out.mp4"
    assert main(["transcode", str(cut), "-o", str(out), "--start", "0.5", *NULL]) == 1
    line = error_line(capsys)
    assert "cut.mkv is damaged" in line and "complete for the" in line, line
    assert out.is_file()  # the frames that could be decoded are kept, as without --start
