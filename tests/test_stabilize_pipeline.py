"""The stabiliser wired in: through the engine (lookahead keeps every frame), the CLI, sidecars, config.

tests/test_stabilize.py proves the stabiliser itself against ground truth; these tests prove the
wiring with the real network at the tiny input: which mode runs by default, that each frame gets
its own stabilised depth back in order, and that the mode, parameters and cuts are recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from streamer.cli.main import main
from streamer.cli.options import build_config
from streamer.config import load_config
from streamer.engine import worker
from streamer.engine.pipeline import Pipeline
from streamer.errors import ConfigError
from streamer.focal import FocalResolver
from streamer.processors.metric3d import Metric3DProcessor, Metric3DStage
from streamer.processors.stabilize import Stabilizer
from streamer.processors.stabilize_params import StabilizeParams
from streamer.processors.stabilize_stage import StabilizeStage
from streamer.sinks import Sink
from streamer.sinks.images import decode_exr
from streamer.sources import PatternSource, VideoSource
from streamer.sources.testsrc import pattern_image

from conftest import TINY_INPUT, encode_images, video_timestamps, write_video

TINY = f"{TINY_INPUT[0]}x{TINY_INPUT[1]}"


class Collect(Sink):
    """Keeps what it is given: the frame's index and pts, and its maps."""

    def __init__(self, needs=("depth",)):
        self.needs = frozenset(needs)
        self.items = []

    def write(self, result):
        self.items.append((result.frame.index, result.frame.pts, {k: v.copy() for k, v in result.maps.items()}))


@pytest.fixture(scope="module")
def stage(small_model):
    return Metric3DStage(Metric3DProcessor(small_model, TINY_INPUT), FocalResolver(1000.0, 1000.0))


def transcode(checkpoint, *args: str) -> int:
    return main(["transcode", *args, "--checkpoint", str(checkpoint), "--input-size", TINY, "--device", "cpu"])


def write_cut_video(path: Path, frames: int = 20, cut: int = 10, size: tuple[int, int] = (96, 64), rate: int = 10):
    """A clip whose content changes abruptly at frame `cut`: the test pattern, then its negative
    with the colour channels turned around (the disc keeps moving in both scenes)."""
    images = [pattern_image(*size, i / rate) for i in range(frames)]
    images[cut:] = [np.ascontiguousarray(255 - image[..., ::-1]) for image in images[cut:]]
    return encode_images(path, images, rate)


def test_lookahead_through_the_engine_gives_each_frame_its_own_depth_in_order(tmp_path, stage):
    """File source, batches of 3, lookahead of 2: frames leave late, across batches and at the
    flush, yet each leaves once, in order, with its pts and the depth the stabiliser made for it."""
    path = write_video(tmp_path / "v.mp4", frames=11)
    raw = Collect(("depth", "confidence", "image"))
    Pipeline(VideoSource(str(path)), stage, [raw], batch_size=3).run()
    stabilised = Collect()
    lookahead = StabilizeStage("lookahead", StabilizeParams(lookahead=2))
    stats = Pipeline(VideoSource(str(path)), stage, [stabilised], batch_size=3, stabilizer=lookahead).run()

    assert [(i, pts) for i, pts, _ in stabilised.items] == [(i, pts) for i, pts, _ in raw.items]
    assert [i for i, _, _ in stabilised.items] == list(range(11)) and stats["frames_out"] == 11
    direct = Stabilizer("lookahead", lookahead=2)  # the same frames pushed by hand
    expected = []
    for index, _, maps in raw.items:
        depth, confidence, image = (torch.from_numpy(maps[k]) for k in ("depth", "confidence", "image"))
        expected += direct.push(depth, confidence, image, key=index)
    expected += direct.flush()
    for (index, _, maps), (key, depth) in zip(stabilised.items, expected, strict=True):
        assert index == key
        np.testing.assert_allclose(maps["depth"], depth.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.array_equal(stabilised.items[5][2]["depth"], raw.items[5][2]["depth"])  # it did stabilise


def test_live_source_runs_causal_and_refuses_lookahead(stage):
    source = PatternSource("testsrc:96x64@30", frames=6)
    sink = Collect()
    stats = Pipeline(source, stage, [sink], stabilizer=StabilizeStage("causal")).run()
    indices = [i for i, _, _ in sink.items]
    assert indices == sorted(indices) and stats["frames_out"] == len(indices) > 0
    with pytest.raises(ConfigError, match="live source"):
        Pipeline(PatternSource("testsrc:96x64@30"), stage, [sink], stabilizer=StabilizeStage("lookahead"))


def test_causal_metric16_records_mode_params_and_cuts(tmp_path, checkpoint, capsys):
    src = write_video(tmp_path / "in.mp4", frames=6)
    out = tmp_path / "d.mkv"
    assert transcode(checkpoint, str(src), "-o", str(out), "--format", "metric16", "--stabilize", "causal") == 0
    assert "scene cuts 0" in capsys.readouterr().err
    sidecar = json.loads(out.with_suffix(".json").read_text())["stabilize"]
    assert sidecar == {"mode": "causal", "params": StabilizeParams().as_dict(), "scene_cuts": []}
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 6
        embedded = json.loads({k.lower(): v for k, v in c.metadata.items()}["comment"])
    assert embedded["stabilize"]["mode"] == "causal" and embedded["stabilize"]["params"]["lookahead"] == 3


def test_off_reproduces_the_raw_depth_and_the_default_stabilises(tmp_path, checkpoint, stage):
    src = write_video(tmp_path / "in.mp4", frames=6)
    collect = Collect()
    # the same sums on both sides: one torch thread (the CLI's `--threads 1`) and one frame per pass
    # (a team of two, or a batch, adds in another order: the last bits differ)
    before = worker.on_device_thread(torch.get_num_threads)
    worker.on_device_thread(torch.set_num_threads, 1)
    try:
        Pipeline(VideoSource(str(src)), stage, [collect]).run()
    finally:
        worker.on_device_thread(torch.set_num_threads, before)
    raw = [maps["depth"] for _, _, maps in collect.items]
    written = {}
    for name, args in (("off", ("--stabilize", "off")), ("default", ())):
        out = tmp_path / name
        args = (*args, "--batch-size", "1", "--threads", "1")
        assert transcode(checkpoint, str(src), "-o", str(out), "--format", "exr", "--fx", "1000", *args) == 0
        depths = [decode_exr(p.read_bytes()) for p in sorted(out.glob("frame_*.exr"))]
        written[name] = depths, json.loads((out / "metadata.json").read_text())["stabilize"]
    off, off_sidecar = written["off"]
    assert all(np.array_equal(a, b) for a, b in zip(off, raw, strict=True)) and off_sidecar == {"mode": "off"}
    default, default_sidecar = written["default"]
    assert default_sidecar["mode"] == "causal"
    assert not all(np.array_equal(a, b) for a, b in zip(default, raw, strict=True))


def test_comfy_formats_default_to_off_and_refuse_stabilising(tmp_path, checkpoint, capsys):
    src = write_video(tmp_path / "in.mp4", frames=2)
    out = tmp_path / "c.mp4"
    assert transcode(checkpoint, str(src), "-o", str(out), "--format", "comfy-depth", "--resolution", "64") == 0
    assert json.loads(out.with_suffix(".json").read_text())["stabilize"] == {"mode": "off"}
    capsys.readouterr()
    args = ("-o", str(tmp_path / "d.mp4"), "--format", "comfy-depth", "--stabilize", "causal")
    assert transcode(checkpoint, str(src), *args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ComfyUI node frame by frame" in err


def test_lookahead_on_a_live_source_is_one_line_before_the_model_loads(checkpoint, capsys):
    args = ["preview", "--source", "testsrc:96x64@30", "--stabilize", "lookahead", "--checkpoint", str(checkpoint)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --stabilize lookahead is for files") and "--stabilize causal" in err
    assert len(err.splitlines()) == 1 and "loading" not in err


def test_a_hard_cut_is_listed_with_its_frame_and_time(tmp_path, checkpoint, capsys):
    src = write_cut_video(tmp_path / "cut.mp4", frames=20, cut=10, rate=10)
    out = tmp_path / "d.mkv"
    assert transcode(checkpoint, str(src), "-o", str(out), "--format", "metric16", "--stabilize", "lookahead") == 0
    assert "scene cuts 1" in capsys.readouterr().err
    assert video_timestamps(out) == video_timestamps(src)  # every frame, its own time
    [cut] = json.loads(out.with_suffix(".json").read_text())["stabilize"]["scene_cuts"]
    assert (cut["frame"], cut["time"]) == (10, 1.0) and cut["score"] > 0.08


def test_config_keys_and_flag():
    assert load_config("default").model.stabilize == "auto"
    cfg = build_config(None, {"stabilize": "lookahead"})
    assert cfg.model.stabilize == "lookahead"
    cfg = load_config(None, {"model": {"stabilize_params": {"lookahead": 5, "pixel_memory": 4.5}}})
    assert cfg.model.stabilize_params == {"lookahead": 5, "pixel_memory": 4.5}
    with pytest.raises(ConfigError, match="model.stabilize_params.*lookahed unknown"):
        load_config(None, {"model": {"stabilize_params": {"lookahed": 5}}})
    with pytest.raises(ConfigError, match="lookahead must be a whole number"):
        load_config(None, {"model": {"stabilize_params": {"lookahead": 2.5}}})
    with pytest.raises(ConfigError, match="model.stabilize"):
        load_config(None, {"model": {"stabilize": "smooth"}})
