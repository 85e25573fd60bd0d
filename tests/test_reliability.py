"""Bad input, faults and interruptions: one clear line, a non-zero exit, no lost or corrupt output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.cli.main import main
from streamer.engine.pipeline import Pipeline
from streamer.errors import PipelineError
from streamer.focal import FocalResolver
from streamer.processors.metric3d import Metric3DProcessor, Metric3DStage
from streamer.sources import VideoSource
from streamer.sources.webcam import WebcamSource
from streamer.types import StreamInfo

from conftest import TINY_INPUT, write_video

TINY = f"{TINY_INPUT[0]}x{TINY_INPUT[1]}"
REPO = Path(__file__).resolve().parent.parent


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def model_args(checkpoint):
    return ["--checkpoint", str(checkpoint), "--input-size", TINY, "--device", "cpu"]


def test_directory_as_input(tmp_path, capsys, model_args):
    code, err = run_cli(capsys, "transcode", str(tmp_path), "-o", str(tmp_path / "o.mp4"), *model_args)
    assert code == 1
    assert_one_line(err, "is a directory")


@pytest.mark.parametrize(
    "content,needle",
    [(b"", "is empty (0 bytes)"), (b"this is not a video at all" * 50, "could not be opened as a video")],
)
def test_empty_or_non_video_file(tmp_path, capsys, model_args, content, needle):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    code, err = run_cli(capsys, "transcode", str(bad), "-o", str(tmp_path / "o.mp4"), *model_args)
    assert code == 1
    assert_one_line(err, needle)


def test_container_without_video(tmp_path, capsys, model_args):
    audio = tmp_path / "sound.m4a"
    with av.open(str(audio), "w") as c:
        stream = c.add_stream("aac", rate=8000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame) + stream.encode(None):
            c.mux(packet)
    code, err = run_cli(capsys, "transcode", str(audio), "-o", str(tmp_path / "o.mp4"), *model_args)
    assert code == 1
    assert_one_line(err, "has no video stream")


def test_unusual_pixel_format_is_converted(tmp_path, capsys, model_args):
    src = tmp_path / "deep.mkv"
    with av.open(str(src), "w") as c:
        stream = c.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p10le"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame.reformat(format="yuv444p10le")):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    code, err = run_cli(capsys, "transcode", str(src), "-o", str(tmp_path / "o.mp4"), *model_args)
    assert code == 0, err


def test_truncated_video_keeps_the_decodable_frames(tmp_path, capsys, model_args):
    src = write_video(tmp_path / "full.mkv", frames=30, codec="ffv1")
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size * 55 // 100])
    out = tmp_path / "o.mkv"
    code, err = run_cli(capsys, "transcode", str(cut), "-o", str(out), *model_args)
    assert code == 1
    assert_one_line(err, "is damaged", "could be decoded")
    with av.open(str(out)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert 5 < frames < 30
    assert json.loads(out.with_suffix(".json").read_text())["frames"] == frames


def test_missing_camera_is_named(capsys, model_args):
    code, err = run_cli(capsys, "preview", "--source", "9", *model_args)
    assert code == 1
    assert_one_line(err, "camera 9 could not be opened")


class StallingCapture:
    """A camera that delivers 3 frames and then nothing."""

    def __init__(self):
        self.reads = 0

    def read(self):
        self.reads += 1
        return (True, np.zeros((48, 64, 3), np.uint8)) if self.reads <= 3 else (False, None)

    def release(self):
        pass


def test_camera_that_stops_delivering_is_reported_within_seconds(small_model, monkeypatch):
    import streamer.sources.webcam as webcam

    monkeypatch.setattr(webcam, "STALL_TIMEOUT_S", 1.0)
    source = WebcamSource.__new__(WebcamSource)
    source.device, source.limit, source.cap = 0, None, StallingCapture()
    source.info = StreamInfo(64, 48, Fraction(1, 1_000_000), Fraction(30), True, None, "camera 0")
    stage = Metric3DStage(Metric3DProcessor(small_model, TINY_INPUT), FocalResolver(1000.0, 1000.0))
    started = time.monotonic()
    with pytest.raises(PipelineError, match="camera 0 stopped delivering frames") as info:
        Pipeline(source, stage, []).run()
    assert info.value.stage == "capture"
    assert time.monotonic() - started < 5


def test_unwritable_output_directory(tmp_path, capsys, model_args, video):
    code, err = run_cli(capsys, "transcode", str(video), "-o", "/proc/streamer-test.mp4", *model_args)
    assert code == 1
    assert_one_line(err, "/proc")


def test_bad_backbone_and_checkpoints(tmp_path, capsys, video, checkpoint):
    out = str(tmp_path / "o.mp4")
    code, err = run_cli(capsys, "transcode", str(video), "-o", out, "--backbone", "vit-huge")
    assert code == 2
    assert_one_line(err, "vit-huge", "vit-small")
    code, err = run_cli(capsys, "transcode", str(video), "-o", out, "--checkpoint", str(tmp_path / "none.pth"))
    assert code == 1
    assert_one_line(err, "does not exist")
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    code, err = run_cli(capsys, "transcode", str(video), "-o", out, "--checkpoint", str(bad))
    assert code == 1
    assert_one_line(err, "not a readable weights-only checkpoint")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(checkpoint.read_bytes()[:100_000])
    code, err = run_cli(capsys, "transcode", str(video), "-o", out, "--checkpoint", str(cut))
    assert code == 1
    assert_one_line(err, "not a readable weights-only checkpoint")
    code, err = run_cli(
        capsys, "transcode", str(video), "-o", out, "--checkpoint", str(checkpoint), "--backbone", "vit-large"
    )
    assert code == 1
    assert_one_line(err, "is for vit-small, but the model is vit-large", "--backbone vit-small")
    assert not Path(out).exists() and not (tmp_path / "o.partial.mp4").exists()


CLI = [sys.executable, "-c", "import sys; from streamer.cli.main import main; sys.exit(main(sys.argv[1:]))"]


def test_disk_full_stops_the_run_and_leaves_no_final_file(tmp_path, checkpoint):
    src = write_video(tmp_path / "in.mp4", frames=40, size=(320, 240))
    out = tmp_path / "o.mkv"
    limit = (
        "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000)); "
    )
    cmd = [sys.executable, "-c", limit + CLI[2], "transcode", str(src), "-o", str(out), "--format", "metric16"]
    cmd += ["--checkpoint", str(checkpoint), "--input-size", TINY, "--device", "cpu", "--runtime", "torch"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 1, proc.stderr
    assert_one_line(proc.stderr, "failed")
    assert not out.exists()


def test_sigterm_during_transcode_leaves_a_playable_partial_file(tmp_path, checkpoint):
    src = write_video(tmp_path / "in.mp4", frames=400)
    out = tmp_path / "o.mkv"
    cmd = [*CLI, "transcode", str(src), "-o", str(out), "--checkpoint", str(checkpoint), "--input-size", TINY]
    cmd += ["--runtime", "torch"]  # the sink is the point, not an exported graph
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=REPO)
    partial = tmp_path / "o.partial.mkv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not partial.exists() or partial.stat().st_size < 20_000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err.splitlines()[-1]
    assert not out.exists()
    with av.open(str(partial)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    sidecar = json.loads(partial.with_suffix(".json").read_text())
    assert sidecar["complete"] is False and sidecar["frames"] == frames > 0


def test_soak_live_source_keeps_memory_flat_and_latency_bounded(small_model):
    """Shortened soak (benchmarks/soak.py runs thousands of frames)."""
    from streamer.sources import PatternSource

    stage = Metric3DStage(Metric3DProcessor(small_model, TINY_INPUT), FocalResolver(1000.0, 1000.0))

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    Pipeline(PatternSource("testsrc:96x64@300", frames=100), stage, []).run()  # warm up allocators
    before = rss_mb()
    stats = Pipeline(PatternSource("testsrc:96x64@300", frames=600), stage, []).run()
    growth = rss_mb() - before
    assert growth < 40, f"RSS grew {growth:.0f} MB over 600 frames"
    assert stats["frames_in"] == 600 and stats["frames_dropped"] > 0
    assert stats["latency_ms"]["p95"] < 10 * stats["stage_ms"]["inference"] + 200


def corrupted_copies(data: bytes, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        buf = bytearray(data)
        positions = rng.integers(len(buf) // 10, len(buf), size=rng.integers(1, 40))
        for pos in positions:
            buf[pos] = int(rng.integers(0, 256))
        yield bytes(buf)


@pytest.mark.timeout(120)
def test_fuzzed_videos_never_hang_or_crash_the_file_source(tmp_path):
    original = write_video(tmp_path / "orig.mp4", frames=12).read_bytes()
    stop = threading.Event()
    for i, data in enumerate(corrupted_copies(original, 40)):
        path = tmp_path / f"fuzz{i}.mp4"
        path.write_bytes(data)
        try:
            source = VideoSource(str(path))
        except Exception as exc:  # only our clear error is allowed
            assert type(exc).__name__ == "SourceError", repr(exc)
            continue
        with source:
            frames = list(source.frames(stop))
        assert all(f.image.dtype == np.uint8 and f.image.ndim == 3 for f in frames)


@pytest.mark.timeout(240)
def test_fuzzed_videos_through_transcode_give_output_or_one_clear_error(tmp_path, capsys, model_args):
    original = write_video(tmp_path / "orig.mp4", frames=6).read_bytes()
    for i, data in enumerate(corrupted_copies(original, 6, seed=1)):
        path = tmp_path / f"fuzz{i}.mp4"
        path.write_bytes(data)
        code, err = run_cli(capsys, "transcode", str(path), "-o", str(tmp_path / f"o{i}.mp4"), *model_args)
        assert code in (0, 1), err
        if code == 1:
            assert_one_line(err)
