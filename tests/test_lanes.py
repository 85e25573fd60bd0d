"""Forward passes side by side for files on the CPU (engine lanes): order, every frame, errors, stops, the rule."""

from __future__ import annotations

import os
import threading
import time

import av
import pytest
import torch

from streamer.api import make_pipeline
from streamer.config import Config
from streamer.engine import lanes as lanes_module
from streamer.engine import pipeline as pipeline_module
from streamer.engine import worker
from streamer.engine.pipeline import Pipeline
from streamer.engine.plan import run_lanes, use_lanes
from streamer.engine.shared import SharedStage
from streamer.engine.threads import file_lanes, lanes_budget
from streamer.errors import Interrupted, PipelineError
from streamer.focal import FocalResolver
from streamer.processors.metric3d import Metric3DProcessor, Metric3DStage
from streamer.sources import PatternSource, VideoSource

from conftest import TINY_INPUT, write_video
from test_pipeline import RecordingSink


class TimedStage(Metric3DStage):
    """The real stage; each forward pass waits `delay(batch number)` first and records its thread
    and how many passes ran at once, so lanes finish out of order and their overlap shows."""

    def __init__(self, model, delay=lambda n: 0.0, fail_at: int | None = None, hold: threading.Event | None = None):
        super().__init__(Metric3DProcessor(model, TINY_INPUT), FocalResolver(1000.0, 1000.0))
        self.delay, self.fail_at, self.hold = delay, fail_at, hold
        self.threads: list[str] = []
        self.pools: list[int] = []  # torch's pool size in each pass
        self.spans: list[tuple[float, float]] = []  # each pass's start and end, in call order
        self.running = self.most = self.calls = 0
        self.lock = threading.Lock()

    def infer(self, images, focal_hint=None):
        with self.lock:
            number, self.calls = self.calls, self.calls + 1
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.append(threading.current_thread().name)
            self.pools.append(torch.get_num_threads())
        start = time.monotonic()
        try:
            if self.hold is not None and number > 0:  # the first pass may run alone; then two hold
                self.hold.wait(30)
            if number == self.fail_at:
                raise RuntimeError("forward broke")
            time.sleep(self.delay(number))
            return super().infer(images, focal_hint)
        finally:
            with self.lock:
                self.running -= 1
                self.spans.append((start, time.monotonic()))


@pytest.fixture
def one_torch_thread():
    """Lanes run with torch's pool at one thread each (as engine/plan.py use_lanes sets it on 2 cores)."""
    before = worker.on_device_thread(torch.get_num_threads)
    worker.on_device_thread(torch.set_num_threads, 1)
    yield
    worker.on_device_thread(torch.set_num_threads, before)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_lanes_keep_every_frame_in_order_when_passes_end_out_of_order(
    tmp_path, small_model, one_torch_thread, batch_size
):
    path = write_video(tmp_path / "v.mp4", frames=13)
    stage = TimedStage(small_model, delay=lambda n: 0.15 if n % 2 == 0 else 0.0)  # even batches end last
    sink = RecordingSink()
    stats = Pipeline(VideoSource(str(path)), stage, [sink], batch_size=batch_size, lanes=2).run()
    with av.open(str(path)) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert [(i, p) for i, p, _ in sink.items] == list(enumerate(pts))
    assert stats["frames_out"] == 13 and sink.closed is True
    assert all(name.startswith("device-lane") for name in stage.threads), stage.threads
    assert stage.most == 2  # two passes ran at once


def test_the_processs_first_pass_in_lanes_runs_alone_and_later_runs_do_not_wait(
    tmp_path, small_model, one_torch_thread
):
    """A runtime initialises on its first call (OpenVINO's binding deadlocked once when two lanes
    made theirs together): the process's first pass runs alone; later runs start two at once."""
    path = write_video(tmp_path / "v.mp4", frames=4)
    lanes_module._first_pass_done.clear()  # as in a fresh process
    starts = []
    for _ in range(2):
        stage = TimedStage(small_model, delay=lambda n: 0.2 if n == 0 else 0.0)
        Pipeline(VideoSource(str(path)), stage, [RecordingSink()], lanes=2).run()
        first_end = min(end for _, end in stage.spans)
        starts.append(sorted(start for start, _ in stage.spans)[1] >= first_end)
    assert starts == [True, False]


def test_lanes_give_the_depth_one_pass_at_a_time_gives(tmp_path, small_model, one_torch_thread):
    path = write_video(tmp_path / "v.mp4", frames=6)
    depths = {}
    for lanes in (1, 2):
        sink, stage = RecordingSink(), TimedStage(small_model)
        sink.write = lambda result, sink=sink: sink.items.append(result.depth.copy())
        Pipeline(VideoSource(str(path)), stage, [sink], lanes=lanes).run()
        depths[lanes] = sink.items
        assert all(name.startswith("device-lane") == (lanes == 2) for name in stage.threads)
    assert len(depths[2]) == 6
    for one, two in zip(depths[1], depths[2], strict=True):
        assert (one == two).all()  # one torch thread either way: the same sums


def test_a_failure_in_a_lane_stops_the_run(tmp_path, small_model, one_torch_thread):
    path = write_video(tmp_path / "v.mp4", frames=12)
    sink = RecordingSink()
    stage = TimedStage(small_model, delay=lambda n: 0.05, fail_at=3)
    with pytest.raises(PipelineError) as info:
        Pipeline(VideoSource(str(path)), stage, [sink], lanes=2).run()
    assert info.value.stage == "inference" and "forward broke" in str(info.value)
    assert all(name.startswith("device-lane") for name in stage.threads)
    assert sink.closed is False and [i for i, _, _ in sink.items] == list(range(len(sink.items)))
    assert len(sink.items) <= 3


def test_a_stop_does_not_wait_for_the_passes_in_the_lanes(tmp_path, small_model, one_torch_thread):
    path = write_video(tmp_path / "v.mp4", frames=12)
    hold = threading.Event()  # both lanes sit in a long forward pass
    stage = TimedStage(small_model, hold=hold)
    sink = RecordingSink()
    pipeline = Pipeline(VideoSource(str(path)), stage, [sink], lanes=2)
    threading.Timer(0.5, pipeline.person_stop).start()
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            pipeline.run()
        assert time.monotonic() - started < 3.0
        assert stage.most == 2 and len(sink.items) <= 1 and sink.closed is False  # the first pass ran alone
    finally:
        hold.set()  # the passes end on their own; the lanes are free for the next run
    deadline = time.monotonic() + 10
    while worker.busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not worker.busy()


def test_each_lane_runs_torch_on_the_runs_share_of_threads(tmp_path, small_model):
    """A lane thread keeps the pool size it first ran with and outlives the run: each run sets it."""
    path = write_video(tmp_path / "v.mp4", frames=6)
    for threads in (2, 1):
        stage = TimedStage(small_model)
        Pipeline(VideoSource(str(path)), stage, [RecordingSink()], lanes=2, lane_threads=threads).run()
        assert stage.pools and set(stage.pools) == {threads}, (threads, stage.pools)


def test_live_settings_are_read_in_batch_order_with_lanes(tmp_path, small_model, one_torch_thread):
    """Each batch's settings are read on the inference thread as it is sent to a lane, so a later
    batch never carries an older setting than an earlier one."""
    path = write_video(tmp_path / "v.mp4", frames=10)
    stage = TimedStage(small_model, delay=lambda n: 0.1 if n % 2 == 0 else 0.0)
    sink = RecordingSink()
    pipeline = Pipeline(VideoSource(str(path)), stage, [sink], lanes=2)
    taken, read_on = [], []
    snapshot = pipeline.outputs.snapshot

    class Read(tuple):  # the snapshot as it is, an object of its own per read (an empty tuple is shared)
        pass

    def recorded():
        read_on.append(threading.current_thread().name)
        taken.append(Read(snapshot()))
        return taken[-1]

    pipeline.outputs.snapshot = recorded
    order = []
    render = pipeline._render

    def rendered(group):
        looks = group.meta[pipeline_module.LOOKS]
        order.append(next(i for i, t in enumerate(taken) if t is looks))  # which read this batch carries
        return render(group)

    pipeline._render = rendered
    pipeline.run()
    assert order == list(range(10)) and len(sink.items) == 10
    assert not any(name.startswith("device-lane") for name in read_on)


def test_make_pipeline_runs_lanes_for_files_only(tmp_path, small_model):
    stage = TimedStage(small_model)
    stage.lanes = 2  # as engine/plan.py use_lanes leaves it
    path = write_video(tmp_path / "v.mp4", frames=2)
    assert make_pipeline(VideoSource(str(path)), stage, [RecordingSink()]).lanes == 2
    assert make_pipeline(PatternSource("testsrc:96x64@30"), stage, [RecordingSink()]).lanes == 1
    assert Pipeline(VideoSource(str(path)), SharedStage(stage), [], lanes=2).lanes == 1


@pytest.mark.parametrize(
    ("input_size", "cores", "expected"),
    [((224, 392), 2, 2), ((616, 1064), 16, 2), ((224, 392), 1, 1), ((56, 112), 2, 1), ((56, 84), 8, 1)],
)
def test_the_lanes_rule(input_size, cores, expected):
    count, why = file_lanes(input_size, cores)
    assert count == expected and why


def test_run_lanes_follows_the_source_the_setting_and_compile(small_model):
    stage = TimedStage(small_model, delay=lambda n: 0.0)
    stage.processor.input_size = (224, 392)  # the rule reads the input's tokens
    cfg = Config()
    assert run_lanes(cfg, stage, live=False)[0] == (2 if (os.cpu_count() or 1) >= 2 else 1)
    assert run_lanes(cfg, stage, live=True) == (1, "one forward pass at a time")
    cfg.engine.lanes = 3
    assert run_lanes(cfg, stage, live=False) == (3, "3 forward passes side by side (given)")
    cfg.model.compile = True
    assert run_lanes(cfg, stage, live=False)[0] == 1


def test_lanes_budget_splits_the_cores():
    torch_budget = lanes_budget("torch", 2, 8)
    assert torch_budget.torch == 4 and "2 forward passes side by side on 4 threads each" in torch_budget.reason
    own = lanes_budget("openvino", 2, 2)
    assert own.torch == 1 and "openvino's own pool" in own.reason


def test_use_lanes_sets_the_stage_and_torch_pool(small_model):
    stage = TimedStage(small_model)
    before = worker.on_device_thread(torch.get_num_threads)
    try:
        budget = worker.on_device_thread(use_lanes, stage, 2, 4)
        assert stage.lanes == 2 and budget.torch == 2
        assert worker.on_device_thread(torch.get_num_threads) == 2
        worker.on_device_thread(use_lanes, stage, 1)
        assert stage.lanes == 1
    finally:
        worker.on_device_thread(torch.set_num_threads, before)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="lanes need two cores")
def test_a_transcode_says_its_lanes_and_keeps_every_frame(tmp_path, checkpoint, capsys):
    """The command as a person runs it, on an input over 128 tokens (168x196: 168), torch on the
    CPU: lanes chosen and said in one line, every frame written; `--lanes 1` runs without them."""
    from streamer.cli.main import main

    path = write_video(tmp_path / "in.mp4", frames=7)
    before = worker.on_device_thread(torch.get_num_threads)
    try:
        for lanes in ("auto", "1"):
            out = tmp_path / f"out-{lanes}.mp4"
            args = ["transcode", str(path), "-o", str(out), "--checkpoint", str(checkpoint), "--runtime", "torch"]
            assert main([*args, "--input-size", "168x196", "--device", "cpu", "--lanes", lanes]) == 0
            said = capsys.readouterr().err
            assert ("lanes: 2 forward passes side by side" in said) == (lanes == "auto"), said
            with av.open(str(out)) as c:
                assert sum(1 for _ in c.decode(video=0)) == 7
    finally:
        worker.on_device_thread(torch.set_num_threads, before)
