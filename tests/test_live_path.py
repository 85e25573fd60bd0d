"""The real-time path: results leave at once, files into live outputs play in real time, the window
lives on the main thread and stays responsive, the overlay stays in the window."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from streamer.api import make_pipeline
from streamer.config import Config
from streamer.engine.pipeline import Pipeline
from streamer.engine.stats import Stats
from streamer.processors.null import NullStage
from streamer.sinks import PreviewSink, Sink
from streamer.sources import PatternSource
from streamer.types import Frame, Result
from streamer.views import PictureSettings

from conftest import SlowStage

CPU = torch.device("cpu")


class ThreadNotingSink(Sink):
    """Notes which thread writes and idles, like a GUI window must care about."""

    needs = frozenset({"picture"})
    live = True
    main_thread = True
    idle_interval = 0.02

    def __init__(self) -> None:
        self.picture = PictureSettings("gray")
        self.threads: set[str] = set()
        self.idles = 0
        self.written = 0

    def open(self, info, stats) -> None:
        self.threads.add(threading.current_thread().name)

    def write(self, result) -> None:
        self.threads.add(threading.current_thread().name)
        self.written += 1

    def idle(self) -> None:
        self.idles += 1
        self.threads.add(threading.current_thread().name)


def test_live_results_leave_as_soon_as_they_exist():
    """Paced at 5 fps, a 40 ms model: latency is about the model time, not a frame interval more."""
    source = PatternSource("testsrc:64x48@5", frames=8)
    stats = Pipeline(source, SlowStage(0.04), [ThreadNotingSink()]).run()
    assert stats["frames_out"] >= 6
    # before the fix every result waited for the next frame: p50 >= 200 ms + the model
    assert stats["latency_ms"]["p50"] < 150, stats["latency_ms"]


def test_window_sinks_run_on_the_main_thread_and_stay_responsive():
    sink = ThreadNotingSink()
    Pipeline(PatternSource("testsrc:64x48@10", frames=3, live=False), SlowStage(0.3), [sink]).run()
    assert sink.threads == {threading.main_thread().name}
    assert sink.written == 3
    assert sink.idles >= 10  # events pumped while the slow model worked


def test_a_file_feeding_live_outputs_plays_in_real_time():
    cfg = Config()
    frames = 10
    started = time.monotonic()
    source = PatternSource("testsrc:64x48@20", frames=frames, live=False)  # a "file": never drops
    stats = make_pipeline(source, NullStage(CPU), [ThreadNotingSink()], cfg).run()
    paced = time.monotonic() - started
    assert stats["frames_out"] == frames and stats["frames_dropped"] == 0
    assert paced >= (frames - 1) / 20 - 0.02  # its timestamps span 0.45 s

    cfg.source.pace = False
    started = time.monotonic()
    source = PatternSource("testsrc:64x48@20", frames=frames, live=False)
    make_pipeline(source, NullStage(CPU), [ThreadNotingSink()], cfg).run()
    assert time.monotonic() - started < paced


def test_preview_overlay_is_drawn_on_its_own_copy():
    sink = PreviewSink(PictureSettings("color"))
    sink.stats = Stats()
    shared = np.zeros((48, 64, 3), np.uint8)  # the same array may go to a recording
    drawn = sink.overlay(shared)
    assert drawn.any() and not shared.any()


def test_dropped_live_frames_pass_their_audio_on():
    """A live source's stale frames are dropped, their audio is not: it rides on the next frame."""
    source = PatternSource("testsrc:64x48@30")
    pipeline = Pipeline(source, NullStage(CPU), [])
    frames = [
        Frame(np.zeros((48, 64, 3), np.uint8), i, i, source.info.time_base, 0.0, audio=[f"a{i}"]) for i in range(3)
    ]
    for frame in frames:
        pipeline.frames.put(frame)  # one slot: the first two are dropped
    taken = pipeline.intake.take(0.1)
    assert taken.index == 2 and taken.audio == ["a0", "a1", "a2"]


def test_a_result_released_by_every_sink_frees_its_buffer():
    released = []
    result = Result(
        Frame(np.zeros((2, 2, 3), np.uint8), 0, 0, source_tb(), 0.0), {}, release=lambda: released.append(1)
    )
    result.done()
    result.done()  # idempotent
    assert released == [1]


def source_tb():
    return PatternSource("testsrc").info.time_base


def test_the_web_server_is_a_live_sink_of_the_engine(tmp_path):
    """`streamer serve`: the engine runs the server's loop on its own thread; a client reads the
    MJPEG stream while a recording of the same run is written."""
    import urllib.request

    from streamer.sinks import VideoSink
    from streamer.sinks.web import WebSink

    web = WebSink(PictureSettings("color"), port=0)
    recording = VideoSink(tmp_path / "rec.mkv", "gray", PictureSettings())
    received: list[bytes] = []

    def client() -> None:
        deadline = time.monotonic() + 20
        while not web.port and time.monotonic() < deadline:
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{web.port}/stream.mjpg", timeout=10) as stream:
            while len(received) < 3:
                line = stream.readline()
                if line.startswith(b"Content-Type: image/jpeg"):
                    received.append(line)

    reader = threading.Thread(target=client, name="test-web-client")
    reader.start()
    stats = Pipeline(PatternSource("testsrc:64x48@20", frames=60), NullStage(CPU), [web, recording]).run()
    reader.join(20)
    assert len(received) == 3
    assert stats["frames_out"] > 0 and (tmp_path / "rec.mkv").exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("streamer-")]


def test_compile_failure_falls_back_to_eager(monkeypatch, small_model):
    """`--compile` never stops a run: if compilation fails on the first call, eager runs instead."""
    from streamer.engine.compiled import CompiledOrEager

    def broken_compile(model, mode=None, **options):
        def compiled(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    wrapped = CompiledOrEager(small_model, CPU)
    x = torch.zeros((1, 3, 56, 84))
    with torch.inference_mode():
        out = wrapped(x)
        expected = small_model(x)
    assert wrapped.failed and torch.equal(out["depth"][-1], expected["depth"][-1])


def test_codec_auto_takes_nvenc_when_it_opens_else_libx264(monkeypatch):
    from streamer.sinks import encoders

    assert encoders.pick_encoder(".mp4", None) in encoders.AUTO_CHAIN
    monkeypatch.setattr(encoders, "encoder_opens", lambda name: name == "h264_nvenc")
    assert encoders.pick_encoder(".mp4", "auto") == "h264_nvenc"
    monkeypatch.setattr(encoders, "encoder_opens", lambda name: False)
    assert encoders.pick_encoder(".mov", None) == "libx264"
    assert encoders.pick_encoder(".mkv", None) == "ffv1"


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    from streamer.engine import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "mps_available", lambda: True)
    assert device.resolve_device("auto").type == "mps"
    assert device.resolve_dtype("auto", torch.device("mps")) == torch.float16
    monkeypatch.setattr(device, "mps_available", lambda: False)
    assert device.resolve_device("auto").type == "cpu"
