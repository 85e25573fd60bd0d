"""Batches finished beside the model on the CPU (engine/finish.py): order, every frame, errors, stops."""

from __future__ import annotations

import threading
import time

import av
import pytest
import torch

from streamer.api import make_pipeline
from streamer.config import load_config
from streamer.engine import pipeline as pipeline_module
from streamer.engine import worker
from streamer.engine.finish import Finisher
from streamer.engine.pipeline import Pipeline
from streamer.engine.shared import SharedStage
from streamer.errors import PipelineError
from streamer.focal import FocalResolver
from streamer.processors.metric3d import Metric3DProcessor, Metric3DStage
from streamer.processors.stabilize_params import StabilizeParams
from streamer.processors.stabilize_stage import StabilizeStage
from streamer.sources import PatternSource, VideoSource

from conftest import TINY_INPUT, write_video
from test_pipeline import RecordingSink


@pytest.fixture(scope="module")
def stage(small_model):
    return Metric3DStage(Metric3DProcessor(small_model, TINY_INPUT), FocalResolver(1000.0, 1000.0))


@pytest.fixture(params=[1, 2], ids=["torch-1-thread", "torch-2-threads"])
def model_threads(request):
    """torch's pool on the model thread: one thread finishes batches apart, more inline."""
    before = worker.on_device_thread(torch.get_num_threads)
    worker.on_device_thread(torch.set_num_threads, request.param)
    yield request.param
    worker.on_device_thread(torch.set_num_threads, before)


def downloads_on(pipeline: Pipeline) -> list[str]:
    """Record the thread each batch's outputs are made on."""
    names: list[str] = []
    download = pipeline.transfer.download

    def recorded(maps):
        names.append(threading.current_thread().name)
        return download(maps)

    pipeline.transfer.download = recorded
    return names


@pytest.mark.parametrize("batch_size", [1, 3])
def test_every_frame_in_order_where_batches_finish(tmp_path, stage, model_threads, batch_size):
    path = write_video(tmp_path / "v.mp4", frames=11)
    sink = RecordingSink()
    pipeline = Pipeline(VideoSource(str(path)), stage, [sink], batch_size=batch_size, queue_size=2)
    threads = downloads_on(pipeline)
    stats = pipeline.run()
    with av.open(str(path)) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert [(i, p) for i, p, _ in sink.items] == list(enumerate(pts))
    assert stats["frames_out"] == 11 and sink.closed is True
    expected = "streamer-finish" if model_threads == 1 else "device-worker"
    assert threads and all(name.startswith(expected) for name in threads), threads
    assert ("maps" in stats["stage_ms"]) == (model_threads == 1)  # the maps at the output size moved too


def test_lookahead_releases_every_frame_once_when_finishing_apart(tmp_path, stage, model_threads):
    path = write_video(tmp_path / "v.mp4", frames=9)
    sink = RecordingSink()
    stabilizer = StabilizeStage("lookahead", StabilizeParams(lookahead=2))
    stats = Pipeline(VideoSource(str(path)), stage, [sink], batch_size=2, stabilizer=stabilizer).run()
    assert [i for i, _, _ in sink.items] == list(range(9))
    assert stats["frames_out"] == 9


def test_a_failure_while_finishing_stops_everything(stage, model_threads):
    sink = RecordingSink()
    source = PatternSource("testsrc:96x64@100", live=False)  # endless: only the error ends it
    pipeline = Pipeline(source, stage, [sink])
    render, calls = pipeline._render, []

    def breaks(group):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("picture broke")
        return render(group)

    pipeline._render = breaks
    with pytest.raises(PipelineError) as info:
        pipeline.run()
    assert info.value.stage == ("render" if model_threads == 1 else "inference")
    assert sink.closed is False and len(sink.items) <= 2


def test_finisher_keeps_order_and_bounds_the_batches_waiting():
    stop, errors, done = threading.Event(), [], []
    finisher = Finisher(stop, errors.append, depth=2)
    release = threading.Event()
    finisher.submit(lambda: (release.wait(5), done.append(0)))
    finisher.submit(done.append, 1)
    third = threading.Thread(target=lambda: finisher.submit(done.append, 2))
    third.start()
    time.sleep(0.3)
    assert third.is_alive()  # two unfinished: the third waits (files keep every frame, memory bounded)
    release.set()
    third.join(5)
    finisher.close()
    assert done == [0, 1, 2] and errors == []


def test_a_stop_releases_a_waiting_submit_and_drops_what_had_not_started():
    stop, errors, done = threading.Event(), [], []
    finisher = Finisher(stop, errors.append, depth=1)
    release = threading.Event()
    finisher.submit(lambda: (release.wait(5), done.append(0)))
    results = []
    waiting = threading.Thread(target=lambda: results.append(finisher.submit(done.append, 1)))
    waiting.start()
    time.sleep(0.2)
    stop.set()
    waiting.join(2)
    assert not waiting.is_alive() and results == [False]
    release.set()
    finisher.close()
    assert done == [0]


def test_errors_go_to_the_owner():
    stop, errors = threading.Event(), []
    finisher = Finisher(stop, errors.append)
    finisher.submit(lambda: 1 / 0)
    finisher.close()
    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)


@pytest.mark.parametrize(("given", "live", "expected"), [("auto", False, 4), ("auto", True, 1), (2, False, 2)])
def test_the_pipeline_takes_the_configs_batch(stage, given, live, expected):
    """auto: four frames per pass for a file at a small input on the CPU (engine/threads.py)."""
    cfg = load_config(None, {"engine": {"batch_size": given}})
    source = PatternSource("testsrc:96x64@30", frames=3, live=live)
    assert make_pipeline(source, stage, [], cfg).batch_size == expected


def test_a_live_run_finishing_apart_stays_in_order_and_ends_on_a_persons_stop(stage, model_threads):
    source = PatternSource("testsrc:96x64@200", frames=400)  # live, faster than the model: frames drop
    sink = RecordingSink(live=True, stop_at=6)  # a quit key after six frames
    started = time.monotonic()
    stats = Pipeline(source, stage, [sink], queue_size=2).run()
    indices = [i for i, _, _ in sink.items]
    assert len(indices) == 6 and indices == sorted(indices) and stats["stopped_by_person"]
    assert sink.closed is True and time.monotonic() - started < 30


@pytest.mark.parametrize("live", [False, True])
def test_live_runs_keep_one_batch_unfinished_files_two(monkeypatch, stage, live):
    """A live frame never waits behind two others' pictures (latency); files buffer one more."""
    depths: list[int] = []

    class Recorded(Finisher):
        def __init__(self, stop, on_error, depth=2):
            depths.append(depth)
            super().__init__(stop, on_error, depth)

    monkeypatch.setattr(pipeline_module, "Finisher", Recorded)
    before = worker.on_device_thread(torch.get_num_threads)
    worker.on_device_thread(torch.set_num_threads, 1)
    try:
        source = PatternSource("testsrc:96x64@30", frames=4, live=live)
        Pipeline(source, stage, [RecordingSink(live=live)]).run()
    finally:
        worker.on_device_thread(torch.set_num_threads, before)
    assert depths == [1 if live else 2]


def test_a_shared_stage_finishes_apart_too(tmp_path, stage, model_threads):
    """Pipelines of one shared model (`batch`): the maps and pictures leave the model thread as well."""
    path = write_video(tmp_path / "v.mp4", frames=7)
    sink = RecordingSink()
    stats = Pipeline(VideoSource(str(path)), SharedStage(stage), [sink], batch_size=2).run()
    assert [i for i, _, _ in sink.items] == list(range(7))
    assert ("maps" in stats["stage_ms"]) == (model_threads == 1)
