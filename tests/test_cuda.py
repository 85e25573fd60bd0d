"""CUDA paths: fp16 model, pinned-ring uploads on a side stream, event-based downloads, no per-frame
synchronize. Skipped without a GPU (run them on a GPU machine: `pytest -m gpu`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamer.engine.device import DeviceTransfer
from streamer.engine.pipeline import Pipeline
from streamer.focal import FocalResolver
from streamer.models.metric3d import build_metric3d
from streamer.processors.metric3d import Metric3DProcessor, Metric3DStage
from streamer.sinks import Sink
from streamer.sources import VideoSource

from conftest import DATA, write_video

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def cuda_model(small_model):
    model = build_metric3d("vit-small", device=CUDA, dtype=torch.float16)
    model.load_state_dict(small_model.state_dict())
    return model.eval()


def test_fp16_on_cuda_matches_fp32_on_cpu_on_the_golden_input(small_model, cuda_model):
    """The tolerance we state for half precision: max relative depth error < 1% (fp16 on CUDA
    against fp32 on the CPU, golden input at the official 616x1064), normals within 0.05."""
    import cv2

    golden = cv2.cvtColor(cv2.imread(str(DATA / "golden_input.png")), cv2.COLOR_BGR2RGB)
    images = torch.from_numpy(golden)[None]
    ref = Metric3DProcessor(small_model)(images, 500.0, 500.0)
    out = Metric3DProcessor(cuda_model)(images.to(CUDA), 500.0, 500.0)
    rel = ((out["depth"].cpu() - ref["depth"]).abs() / ref["depth"]).max().item()
    assert torch.isfinite(out["depth"]).all() and rel < 0.01
    assert (out["normal"].cpu() - ref["normal"]).abs().max().item() < 0.05


def test_device_preprocessing_is_bit_exact(small_model, cuda_model):
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (1, 1080, 1920, 3), dtype=np.uint8))
    cpu_canvas, _ = Metric3DProcessor(small_model).canvas(images)
    gpu_canvas, _ = Metric3DProcessor(cuda_model).canvas(images.to(CUDA))
    assert torch.equal(cpu_canvas, gpu_canvas.cpu())


def test_uploads_use_a_pinned_ring_on_a_side_stream():
    transfer = DeviceTransfer(CUDA, pinned=True, side_stream=True)
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(5)]
    for i, frame in enumerate(frames):
        on_device = transfer.upload([frame])
        assert on_device.is_cuda and int(on_device[0, 0, 0, 0]) == i
    assert transfer.copy_stream is not None
    assert all(slot.host.is_pinned() for slot in transfer._up)
    pending = transfer.download({"x": torch.arange(6, device=CUDA)})
    assert pending.wait()["x"].tolist() == list(range(6))


class Collect(Sink):
    needs = frozenset({"depth"})

    def __init__(self):
        self.indices = []

    def write(self, result):
        self.indices.append(result.frame.index)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_cuda_pipeline_keeps_frames_without_device_synchronize(tmp_path, cuda_model, monkeypatch, batch_size):
    calls = []
    real = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: (calls.append(1), real(*a, **k)))
    src = write_video(tmp_path / "in.mp4", frames=10, size=(320, 240))
    stage = Metric3DStage(Metric3DProcessor(cuda_model, (224, 308)), FocalResolver(1000.0, 1000.0))
    sink = Collect()
    Pipeline(VideoSource(str(src)), stage, [sink], batch_size=batch_size).run()
    assert sink.indices == list(range(10))
    assert calls == []


def test_downloads_go_to_the_sinks_without_a_host_copy_and_the_slot_comes_back():
    transfer = DeviceTransfer(CUDA, pinned=True, side_stream=True)
    first = transfer.download({"x": torch.arange(4, device=CUDA)})
    arrays = first.wait()
    first.lease.hold(1)
    first.lease.release()  # the pipeline hands the slot to one sink
    second = transfer.download({"x": torch.arange(4, device=CUDA) + 10})
    assert second.lease.slot is not first.lease.slot  # still held by the sink: a new slot
    assert arrays["x"].tolist() == [0, 1, 2, 3]  # the sink's view was not overwritten
    first.lease.release()  # the sink is done
    second.wait()
    third = transfer.download({"x": torch.arange(4, device=CUDA)})
    assert third.lease.slot is first.lease.slot  # reused


def test_live_latency_is_the_model_time_plus_little(cuda_model):
    """On a GPU the model beats a 30 fps camera: no result may wait for the next frame."""
    from streamer.sources import PatternSource

    stage = Metric3DStage(Metric3DProcessor(cuda_model, (224, 308)), FocalResolver(1000.0, 1000.0))
    sink = Collect()
    stats = Pipeline(PatternSource("testsrc:640x360@30", frames=60), stage, [sink]).run()
    model_ms = stats["stage_ms"]["inference"]
    assert stats["latency_ms"]["p50"] < model_ms + 15, (stats["latency_ms"], model_ms)


# -- no host sync per frame: the steady state runs under torch.cuda.set_sync_debug_mode("error") --------


class Pictures(Sink):
    """A sink of one picture format; after `warm` frames (LUTs and buffers made) it turns on the
    sync check for the whole process, so any later host wait on the model thread fails the run."""

    def __init__(self, settings, needs=frozenset({"picture"}), warm: int = 3) -> None:
        self.picture, self.needs, self.warm = settings, needs, warm
        self.name = f"pictures:{settings.view}:{settings.pixel_format}:{settings.range}"
        self.written = 0

    def write(self, result):
        self.written += 1
        if self.written == self.warm:
            torch.cuda.set_sync_debug_mode("error")


def formats():
    from streamer.effect_settings import EffectSettings
    from streamer.views import PIXEL_FORMATS, RANGE_MODES, VIEW_FORMATS, PictureSettings

    settings = [PictureSettings(view, range=mode) for view in VIEW_FORMATS for mode in RANGE_MODES]
    settings += [PictureSettings(view, pixel_format=fmt) for view in VIEW_FORMATS for fmt in PIXEL_FORMATS[1:]]
    settings.append(PictureSettings("color", fit=(64, 48)))  # the virtual camera's letterbox
    # the keyed view's other paths: depth of field over a colour, transparency kept (RGBA) or letterboxed
    dof = EffectSettings(focus=1.0, background="color:#00B140")
    settings.append(PictureSettings("keyed", effects=dof, pixel_format="yuv420p"))
    settings.append(PictureSettings("keyed", effects=EffectSettings(background="transparent"), alpha=True))
    settings.append(PictureSettings("keyed", effects=EffectSettings(background="none", focus=2.0), fit=(64, 48)))
    return settings


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_steady_state_makes_no_host_sync_in_any_output_format_or_range(device, batch_size):
    from streamer.calibration import Calibration
    from streamer.processors.null import NullStage
    from streamer.sources import PatternSource

    if device == "cuda:1" and torch.cuda.device_count() < 2:
        pytest.skip("needs a second GPU")
    sinks = [Pictures(s) for s in formats()]
    sinks.append(Pictures(formats()[0], needs=frozenset({"depth_mm", "depth", "normal", "image"})))
    source = PatternSource("testsrc:96x64@30", frames=24, live=False)
    try:
        # a scale factor too (--scale): every metre is multiplied on the device
        calibration = Calibration(0.93, "given")
        stats = Pipeline(
            source, NullStage(torch.device(device)), sinks, batch_size=batch_size, calibration=calibration
        ).run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert stats["frames_out"] == 24 and all(s.written == 24 for s in sinks)


def test_live_settings_switch_without_host_sync():
    """A view or range change makes its tables once; every later frame is free of host waits."""
    from streamer.processors.null import NullStage
    from streamer.sources import PatternSource
    from streamer.views import VIEW_FORMATS, PictureSettings

    settings = PictureSettings("color", range="fixed")
    sink = Pictures(settings, warm=2)
    original = sink.write

    def write(result):
        original(result)
        if sink.written > sink.warm and sink.written % 10 == 0:
            torch.cuda.set_sync_debug_mode(0)  # the first batch in the new view may build a table once
            settings.cycle("view", VIEW_FORMATS)
            sink.warm = sink.written + 8  # the model thread runs up to a queue (4) and a batch ahead

    sink.write = write
    try:
        Pipeline(PatternSource("testsrc:96x64@30", frames=60, live=False), NullStage(CUDA), [sink]).run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert sink.written == 60


def test_compiled_model_keeps_one_graph_through_a_last_partial_batch():
    from torch._dynamo.utils import counters

    from streamer.engine.compiled import CompiledOrEager

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x, all_iterations=False):
            return {"depth": [self.conv(x)[:, :1]]}

    torch._dynamo.reset()
    counters.clear()
    net = Net().to(CUDA).half().eval()
    model = CompiledOrEager(net, CUDA)
    model.warm_up(4, (32, 48))
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        x = torch.rand(3, 3, 32, 48, device=CUDA, dtype=torch.float16)
        out = model(x)["depth"][0].clone()
        want = net(x)["depth"][0]
    assert not model.failed and counters["stats"]["unique_graphs"] == graphs
    assert out.shape[0] == 3 and torch.allclose(out, want, atol=1e-2)


def test_out_of_memory_on_the_gpu_is_reported_not_hidden():
    from streamer.engine.compiled import CompiledOrEager
    from streamer.errors import ModelError

    class Hungry(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, device=CUDA))

        def forward(self, x, all_iterations=False):
            return {"depth": [x.new_empty(1 << 50) + self.w]}  # a petabyte

    model = CompiledOrEager(Hungry(), CUDA)
    with pytest.raises(ModelError, match="out of memory"), torch.inference_mode():
        model(torch.zeros(1, 3, 8, 8, device=CUDA))
    assert not model.failed


@pytest.mark.parametrize("comfy", [False, True])
def test_the_model_stage_makes_no_host_sync_in_steady_state(cuda_model, comfy):
    """The real network too, and the ComfyUI node's pictures (made on the device)."""
    from streamer.sources import PatternSource
    from streamer.views import PictureSettings

    stage = Metric3DStage(
        Metric3DProcessor(cuda_model, (224, 308)),
        FocalResolver(1000.0, 1000.0),
        comfy_resolution=128 if comfy else None,
    )
    needs = frozenset({"comfy_depth", "comfy_normal"} if comfy else {"depth", "depth_mm", "normal", "confidence"})
    sinks = [Pictures(PictureSettings("side-by-side", pixel_format="yuv420p")), Pictures(PictureSettings(), needs)]
    try:
        stats = Pipeline(PatternSource("testsrc:320x240@30", frames=12, live=False), stage, sinks, batch_size=2).run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert stats["frames_out"] == 12
