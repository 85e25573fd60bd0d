"""Shared fixtures: a rule-weight Metric3D checkpoint in the official layout, synthetic videos."""

from __future__ import annotations

import cv2  # noqa: F401  (before av: see streamer/__init__.py)

import json
import os
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from streamer.models.metric3d import build_metric3d
from streamer.models.metric3d.weights import load_weights, rule_weights, save_official_checkpoint, to_model_keys
from streamer.processors.null import NullStage
from streamer.sources.testsrc import pattern_image

DATA = Path(__file__).parent / "data"
TINY_INPUT = (56, 84)  # smallest sensible canonical input: fast real forward passes for pipeline tests

torch.set_num_threads(min(2, os.cpu_count() or 1))


def missing_tool(reason: str) -> None:
    """Skip a test whose system tool is missing here, but fail it in CI, where .ci/run installs it."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run should have installed it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small frames gain nothing from threads, and two OpenMP threads crawl on busy shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def manifest(backbone: str) -> dict:
    return json.loads((DATA / f"manifest_{backbone.replace('-', '_')}.json").read_text())


@pytest.fixture(scope="session")
def rule_state() -> dict[str, torch.Tensor]:
    """vit-small rule weights under the official key names (`depth_model.…`)."""
    return rule_weights(build_metric3d("vit-small", device="meta"))


@pytest.fixture(scope="session")
def small_model(rule_state):
    model = build_metric3d("vit-small", device="meta")
    load_weights(model, to_model_keys(rule_state))
    return model.eval()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, rule_state) -> Path:
    """A checkpoint made by the test suite in the released layout: {'model_state_dict': …}."""
    return save_official_checkpoint(rule_state, tmp_path_factory.mktemp("ckpt") / "metric_depth_vit_small_800k.pth")


AUTO_ORDERS: dict[str, tuple] = {}  # the runtimes' real auto order, for tests/test_runtimes.py


@pytest.fixture(scope="session", autouse=True)
def torch_runtime_for_auto():
    """`--runtime auto` means torch in tests that are not about runtimes: exporting a graph per
    input size would cost each of them seconds, and their expected numbers are torch's (fp32).
    Session-wide, so module- and session-scoped fixtures (reference outputs) see it too;
    tests/test_runtimes.py puts the real order back for itself (`real_auto_order`)."""
    from streamer import runtimes

    AUTO_ORDERS.update(CPU_ORDER=runtimes.CPU_ORDER, CUDA_ORDER=runtimes.CUDA_ORDER)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtimes, "CPU_ORDER", ())
        patch.setattr(runtimes, "CUDA_ORDER", ())
        yield


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every test ends with no pipeline thread left running."""
    yield
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("streamer-")]
    assert not leaked, f"threads left running: {leaked}"


def encode_images(
    path: Path,
    images,
    rate: int = 10,
    codec: str = "libx264",
    options: dict | None = None,
    metadata: dict | None = None,
) -> Path:
    """Encode RGB uint8 pictures as frames 0, 1, 2... (`options` for the container, `metadata` its tags)."""
    images = list(images)
    h, w = images[0].shape[:2]
    with av.open(str(path), "w", options=options or {}) as container:
        container.metadata.update(metadata or {})
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_video(
    path: Path,
    frames: int = 8,
    size: tuple[int, int] = (96, 64),
    rate: int = 10,
    codec: str = "libx264",
    audio: bool = False,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int | None = None,
) -> Path:
    """Encode a small test-pattern video with PyAV; `pts` makes it variable frame rate."""
    w, h = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p" if codec == "libx264" else stream.pix_fmt
        if time_base is not None:
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        astream = None
        if audio:
            astream = container.add_stream("aac", rate=16000)
            astream.layout = "mono"
        tb = time_base or Fraction(1, rate)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_image(w, h, i / rate), format="rgb24")
            frame.pts = pts[i] if pts is not None else i
            frame.time_base = tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if astream is not None:
            n = 16000 * frames // rate
            samples = (0.3 * np.sin(np.arange(n) / 8)).astype(np.float32)[None]
            for start in range(0, n, 1024):
                chunk = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, start : start + 1024]), format="fltp", layout="mono"
                )
                chunk.sample_rate = 16000
                chunk.pts = start
                for packet in astream.encode(chunk):
                    container.mux(packet)
            for packet in astream.encode(None):
                container.mux(packet)
    return path


def video_timestamps(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [float(f.pts * stream.time_base) for f in container.decode(stream)]


@pytest.fixture
def video(tmp_path) -> Path:
    return write_video(tmp_path / "in.mp4")


class SlowStage(NullStage):
    """The null stage plus a fixed delay: a model of known speed, that works while settings change."""

    def __init__(self, seconds: float) -> None:
        super().__init__(torch.device("cpu"))
        self.seconds = seconds

    def __call__(self, images, wants=frozenset({"depth"}), focal_hint=None):
        time.sleep(self.seconds)
        return super().__call__(images, wants, focal_hint)
