"""Broken timestamps and concealed damage, as real camera and phone files carry them (issue 19).

Each kind in tests/media_broken.py goes through `streamer transcode --processor null` (the model
is not the point) and the output is judged by ffprobe: every frame FFmpeg's own decoder presents
is there, in order, at the input's relative times (where the input has none, or one that goes
backwards, one frame after the previous), with the input's audio. `BROKEN_HELD_OUT` repeats every
kind with other sizes, rates and B-frame counts so a fix tuned to one file does not pass.
"""

from __future__ import annotations

import cv2  # noqa: F401  (before av: see streamer/__init__.py)

import time
from collections.abc import Callable
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from media_broken import BROKEN, BROKEN_HELD_OUT, JOINED, LATE, ffmpeg_times, frame_times, thumbnail_first
from media_corpus import H264, Probe, audio_in, ffmpeg, ffmpeg_available, presented_frame_count, probe, video_in

from streamer.cli.main import main
from streamer.errors import SinkError
from streamer.sinks.video import VideoSink
from streamer.sources.timestamps import FrameClock
from streamer.types import Frame, Result, StreamInfo

from conftest import missing_tool

CASES = [pytest.param(make, id=name) for name, make in BROKEN] + [
    pytest.param(make, id=f"heldout-{name}") for name, make in BROKEN_HELD_OUT
]
AUDIO_TOLERANCE_S = 0.1


@pytest.fixture(scope="module")
def ffmpeg_cli() -> None:
    missing = ffmpeg_available()
    if missing:
        missing_tool(f"the broken-file corpus needs the ffmpeg CLI: {missing}")


def transcode(src: Path, out: Path, capsys, caplog, *args: str) -> tuple[int, str]:
    code = main(["transcode", str(src), "-o", str(out), "--processor", "null", "--device", "cpu", *args])
    return code, capsys.readouterr().err + caplog.text


def expected_times(times: list[float | None], interval: float) -> list[float]:
    """The input's presented times relative to its first frame; a missing time, or one not after
    the previous frame's, is one frame interval after the previous frame (issue 19's rule)."""
    out: list[float] = []
    for t in times:
        if out and (t is None or t <= out[-1]):
            out.append(out[-1] + interval)
        else:
            out.append(0.0 if t is None else t)
    return [t - out[0] for t in out]


def judge(src: Path, before: Probe, out: Path) -> list[str]:
    problems: list[str] = []
    after = probe(out)
    decoded = presented_frame_count(src)
    v = after.video
    if v.frames != decoded:
        problems.append(f"video frames: {v.frames}, FFmpeg decodes {decoded} from the input")
    if any(b <= a for a, b in pairwise(v.times)):
        problems.append(f"output times do not increase: {v.times}")
    interval = before.video.interval
    expected = expected_times(frame_times(src), interval)
    if len(expected) == v.frames:
        worst = max((abs(a - b) for a, b in zip(v.times, expected, strict=True)), default=0.0)
        if worst > interval / 2:
            problems.append(f"relative times off by {worst:.3f} s: {v.times} vs {expected}")
    if after.streams[0].kind != "video":
        problems.append("the video is not the first stream")
    if before.audio:
        if not after.audio:
            problems.append("audio lost")
        elif abs(after.audio[0].duration - before.audio[0].duration) > AUDIO_TOLERANCE_S:
            problems.append(f"audio lasts {after.audio[0].duration:.3f} s, input {before.audio[0].duration:.3f} s")
    return problems


@pytest.mark.parametrize("make", CASES)
def test_broken_timestamps_transcode_with_every_frame_in_order(
    make: Callable[[Path], Path], ffmpeg_cli, tmp_path, capsys, caplog
):
    src = make(tmp_path)
    before = probe(src)
    out = tmp_path / "depth.mp4"
    code, said = transcode(src, out, capsys, caplog)
    assert code == 0, said
    assert "disk" not in said
    problems = judge(src, before, out)
    assert not problems, f"{src.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("make", [pytest.param(make, id=name) for name, make in JOINED])
def test_joined_recordings_play_on_where_their_timestamps_jump(
    make: Callable[[Path], Path], ffmpeg_cli, tmp_path, capsys, caplog
):
    """Recordings joined byte-wise come out as one: the second goes on one frame after the first,
    as the ffmpeg CLI plays it (no jump back, no minutes of frozen frame), with its audio."""
    src = make(tmp_path)
    out = tmp_path / "depth.mkv"
    code, said = transcode(src, out, capsys, caplog, "--format", "metric16")
    assert code == 0, said
    after = probe(out)
    expected = ffmpeg_times(src)
    assert after.video.times == pytest.approx(expected, abs=after.video.interval / 2)
    assert after.audio and abs(after.audio[0].duration - after.video.duration) < AUDIO_TOLERANCE_S


@pytest.mark.parametrize("make", [pytest.param(make, id=name) for name, make in LATE])
def test_start_and_end_count_from_where_the_file_starts(
    make: Callable[[Path], Path], ffmpeg_cli, tmp_path, capsys, caplog
):
    """An MPEG-PS/TS clock starting seconds in: `--start 0.4 --end 1` keeps the frames a player
    shows between 0.4 s and 1 s (read from the start where the format's seeks miss keyframes)."""
    src = make(tmp_path)
    before = probe(src)
    lead = before.video.start - before.format_start  # the video's first frame, on the file's clock
    wanted = [t for t in ffmpeg_times(src) if 0.4 - 1e-6 <= t + lead < 1.0 - 1e-6]
    out = tmp_path / "cut.mp4"
    code, said = transcode(src, out, capsys, caplog, "--start", "0.4", "--end", "1")
    assert code == 0, said
    after = probe(out)
    assert after.video.frames == len(wanted)
    assert after.audio and abs(after.audio[0].duration - 0.6) < AUDIO_TOLERANCE_S


def test_pacing_goes_on_over_a_leap_in_the_timestamps(ffmpeg_cli, tmp_path, capsys, caplog):
    """A file whose times leap a minute ahead (a paused recording) is paced over the leap, not
    waited out: one frame after the leap follows at once."""
    src = tmp_path / "leap.mkv"
    leap = "setts=ts=if(gte(N\\,5)\\,PTS+60000\\,PTS)"  # Matroska counts milliseconds
    ffmpeg(*video_in((64, 48), 10, 1.0), *audio_in(1.0), *H264, "-bf", 0, "-bsf:v", leap, "-c:a", "aac", src)
    config = tmp_path / "paced.yaml"
    config.write_text("source:\n  pace: true\n")  # as preview and serve play a file
    started = time.monotonic()
    code, said = transcode(src, tmp_path / "out.mp4", capsys, caplog, "--config", str(config))
    assert code == 0, said
    assert time.monotonic() - started < 60, "the leap was waited out"


def test_audio_is_copied_by_its_codec_and_what_the_muxer_refuses_is_re_encoded(ffmpeg_cli, tmp_path, capsys, caplog):
    """MP3 decoded by `mp3float` is still MP3, which .mp4 holds: copied. WMA (Windows Media
    files) is nothing Matroska's muxer takes: re-encoded, not a refused write."""
    avi, wmv = tmp_path / "divx.avi", tmp_path / "old.wmv"
    ffmpeg(*video_in((64, 48), 10, 1.0), *audio_in(1.0, 44100), "-c:v", "mpeg4", "-c:a", "libmp3lame", avi)
    ffmpeg(*video_in((64, 48), 10, 1.0), *audio_in(1.0, 44100), "-c:v", "wmv2", "-c:a", "wmav2", wmv)
    for src, out, codec, args in ((avi, "depth.mp4", "mp3", ()), (wmv, "depth.mkv", "aac", ("--format", "metric16"))):
        code, said = transcode(src, tmp_path / out, capsys, caplog, *args)
        assert code == 0, said
        after = probe(tmp_path / out)
        assert [a.codec for a in after.audio] == [codec]
        assert abs(after.audio[0].duration - 1.0) < AUDIO_TOLERANCE_S


def test_the_clip_is_read_not_a_thumbnail_track_listed_before_it(ffmpeg_cli, tmp_path, capsys, caplog):
    src = thumbnail_first(tmp_path)
    out = tmp_path / "depth.mp4"
    code, said = transcode(src, out, capsys, caplog)
    assert code == 0, said
    after = probe(out)
    assert after.video.times == pytest.approx(ffmpeg_times(src), abs=after.video.interval / 2)
    assert len(after.video.times) == round(1.2 * 15)


def test_timestamp_problems_are_reported_as_such_not_as_disk_trouble(tmp_path):
    """A sink handed frames whose times go backwards names the timestamps, not the disk."""
    sink = VideoSink(tmp_path / "out.mp4", "gray", codec="libx264")
    sink.open(StreamInfo(32, 32, Fraction(1, 30), Fraction(30), False, None, "x", (), None, None), None)
    picture = np.zeros((32, 32), np.uint8)
    with pytest.raises(SinkError) as raised:
        for pts in (0, 1, 2, 2):
            frame = Frame(np.zeros((32, 32, 3), np.uint8), pts, pts, Fraction(1, 30), 0.0)
            sink.write(Result(frame, {"picture": np.concatenate([picture, picture[:16]])}, {}))
    sink.close(False)
    message = f"{raised.value} {raised.value.hint}"
    assert "timestamp" in message and "disk" not in message


def times(clock: FrameClock, stamps: list[tuple[int | None, int | None]]) -> list[int]:
    pushed = [t for i, (pts, dts) in enumerate(stamps) for _, t in clock.push(i, pts, dts)]
    return pushed + [t for _, t in clock.drain()]


def test_frame_clock_sorts_decode_order_pts_and_fills_the_gaps():
    # pts written in decode order (pts = dts with two B-frames), as the decoder outputs them
    assert times(FrameClock(10), [(10, 20), (0, 30), (30, 40), (40, 50), (20, 60), (50, None)]) == [
        0,
        10,
        20,
        30,
        40,
        50,
    ]
    # no pts (AVI): the packet's dts; nothing at all: one frame on; repeated: one frame on
    assert times(FrameClock(10), [(None, 0), (None, None), (20, None), (20, 30), (None, 30)]) == [0, 10, 20, 30, 40]
    # a live stream sorts nothing (window 0) but still never goes back
    assert times(FrameClock(5, window=0), [(10, None), (0, None), (20, None)]) == [10, 15, 20]
