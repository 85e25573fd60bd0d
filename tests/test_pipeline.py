"""Threads, flow policies and shutdown of the engine, with a real Metric3D at a tiny input."""

from __future__ import annotations

import _thread
import json
import threading
import time

import av
import pytest
import torch

from streamer.engine.pipeline import Pipeline
from streamer.errors import Interrupted, PipelineError, StopRequested
from streamer.focal import FocalResolver
from streamer.processors.metric3d import Metric3DProcessor, Metric3DStage
from streamer.processors.null import NullStage
from streamer.sinks import Sink, VideoSink
from streamer.sources import PatternSource, VideoSource
from streamer.views import PictureSettings

from conftest import TINY_INPUT, write_video


class RecordingSink(Sink):
    needs = frozenset({"depth"})

    def __init__(self, name="rec", live=False, delay=0.0, fail_at=None, stop_at=None):
        self.name, self.live, self.delay, self.fail_at, self.stop_at = name, live, delay, fail_at, stop_at
        self.items = []
        self.closed = None

    def write(self, result):
        if self.fail_at is not None and len(self.items) == self.fail_at:
            raise RuntimeError("sink broke")
        if self.stop_at is not None and len(self.items) == self.stop_at:
            raise StopRequested
        time.sleep(self.delay)
        self.items.append((result.frame.index, result.frame.pts, result.depth.shape))

    def close(self, complete):
        self.closed = complete


@pytest.fixture(scope="module")
def stage(small_model):
    return Metric3DStage(Metric3DProcessor(small_model, TINY_INPUT), FocalResolver(1000.0, 1000.0))


class FailingStage:
    def __init__(self, stage, fail_at):
        self.stage, self.fail_at, self.calls = stage, fail_at, 0
        self.device = stage.device

    def __call__(self, images, *args):
        self.calls += 1
        if self.calls > self.fail_at:
            raise RuntimeError("model broke")
        return self.stage(images, *args)


class FailingSource(PatternSource):
    def frames(self, stop):
        for frame in super().frames(stop):
            if frame.index == 3:
                raise OSError("camera unplugged")
            yield frame


@pytest.mark.parametrize("batch_size", [1, 3])
def test_file_mode_keeps_every_frame_in_order_with_input_timestamps(tmp_path, stage, batch_size):
    path = write_video(tmp_path / "v.mp4", frames=11)
    sink = RecordingSink()
    source = VideoSource(str(path))
    stats = Pipeline(source, stage, [sink], batch_size=batch_size, queue_size=2).run()
    with av.open(str(path)) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert [i for i, _, _ in sink.items] == list(range(11))
    assert [p for _, p, _ in sink.items] == pts
    assert all(shape == (64, 96) for _, _, shape in sink.items)
    assert sink.closed is True
    assert stats["frames_out"] == 11 and stats["frames_dropped"] == 0


def test_live_mode_drops_stale_frames_and_keeps_latency_bounded(stage):
    source = PatternSource("testsrc:96x64@400", frames=120)  # far faster than the engine
    sink = RecordingSink()
    stats = Pipeline(source, stage, [sink], queue_size=4).run()
    assert stats["frames_dropped"] > 0
    assert stats["frames_in"] == 120
    assert stats["frames_out"] + stats["frames_dropped"] == stats["frames_in"]
    indices = [i for i, _, _ in sink.items]
    assert indices == sorted(indices)
    # one-slot input queue: a frame waits for at most the frame being computed, never a backlog
    per_frame = stats["stage_ms"]["inference"]
    assert stats["latency_ms"]["p50"] < 4 * per_frame + 100


def test_slow_live_sink_does_not_stall_file_sink():
    source = PatternSource("testsrc:96x64@30", frames=30, live=False)
    file_sink = RecordingSink("file")
    slow_window = RecordingSink("window", live=True, delay=0.15)
    # the engine's behaviour, not the model's: a stage far faster than the window
    stats = Pipeline(source, NullStage(torch.device("cpu")), [file_sink, slow_window], queue_size=2).run()
    assert len(file_sink.items) == 30
    assert len(slow_window.items) < 30
    assert stats["dropped"]["window"] == 30 - len(slow_window.items)
    assert file_sink.closed and slow_window.closed


def assert_failed_in(stage_name, run):
    with pytest.raises(PipelineError) as info:
        run()
    assert info.value.stage == stage_name


def test_exception_in_capture_stops_everything(stage):
    sink = RecordingSink()
    source = FailingSource("testsrc:96x64@100", live=False)
    assert_failed_in("capture", Pipeline(source, stage, [sink]).run)
    assert sink.closed is False and len(sink.items) <= 3


def test_exception_in_inference_stops_everything(stage):
    sink = RecordingSink()
    source = PatternSource("testsrc:96x64@100", live=False)  # endless: only the error ends it
    assert_failed_in("inference", Pipeline(source, FailingStage(stage, 2), [sink]).run)
    assert sink.closed is False


def test_exception_in_sink_stops_everything(stage):
    broken, healthy = RecordingSink("broken", fail_at=2), RecordingSink("healthy")
    source = PatternSource("testsrc:96x64@100", live=False)
    assert_failed_in("sink:broken", Pipeline(source, stage, [broken, healthy]).run)
    assert broken.closed is False and healthy.closed is False


def test_sink_can_end_the_run_normally(stage):
    sink = RecordingSink(stop_at=3)
    Pipeline(PatternSource("testsrc:96x64@100"), stage, [sink]).run()
    assert len(sink.items) == 3


@pytest.mark.parametrize("live", [True, False])
def test_sigint_stops_quickly_and_finalises_a_playable_file(tmp_path, stage, live):
    """Ctrl-C on a live source is a normal end (the recording is complete); on a file it is an
    interruption: the file stays .partial, still playable, and Interrupted is raised."""
    out = tmp_path / "rec.mkv"
    sink = VideoSink(out, "color", PictureSettings("color"))
    source = PatternSource("testsrc:96x64@30", live=live)  # never ends by itself
    pipeline = Pipeline(source, stage, [sink])
    timer = threading.Timer(1.5, _thread.interrupt_main)
    timer.start()
    started = time.monotonic()
    if live:
        stats = pipeline.run()
        assert stats["stopped_by_person"] is True
    else:
        with pytest.raises(Interrupted):
            pipeline.run()
    stopped_after = time.monotonic() - started - 1.5
    timer.join()
    assert stopped_after < 2.0
    written = out if live else tmp_path / "rec.partial.mkv"
    assert written.exists() and not (tmp_path / ("rec.partial.mkv" if live else "rec.mkv")).exists()
    with av.open(str(written)) as c:
        decoded = sum(1 for _ in c.decode(video=0))
    assert decoded == sink.frames_written > 0
    assert json.loads(written.with_suffix(".json").read_text())["complete"] is live


def test_quit_key_on_a_live_recording_finishes_it(tmp_path, stage):
    """A person's stop from a sink (the preview's q) ends a live recording completely."""
    out = tmp_path / "rec.mp4"
    recording = VideoSink(out, "color", PictureSettings("color"))
    window = RecordingSink("window", live=True, stop_at=3)
    stats = Pipeline(PatternSource("testsrc:96x64@30"), stage, [recording, window]).run()
    assert stats["stopped_by_person"] is True
    assert out.exists() and not (tmp_path / "rec.partial.mp4").exists()
    assert json.loads(out.with_suffix(".json").read_text())["complete"] is True
