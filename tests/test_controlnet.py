"""controlnet_aux preprocessors through the same pipeline, and our controlnet_aux-style detector."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from streamer import Metric3DDetector
from streamer.cli.main import main
from streamer.engine.pipeline import Pipeline
from streamer.errors import ConfigError
from streamer.processors.controlnet import AuxStage, load_detector
from streamer.sinks import Sink, VideoSink
from streamer.sources import PatternSource, VideoSource
from streamer.sources.testsrc import pattern_image
from streamer.views import PictureSettings

from conftest import DATA, video_timestamps, write_video


class Collect(Sink):
    needs = frozenset({"picture"})

    def __init__(self):
        self.picture = PictureSettings()
        self.results = []

    def write(self, result):
        self.results.append(result)


@pytest.mark.parametrize("processor_id", ["canny", "shuffle"])
def test_weight_free_processors_transcode_every_frame(tmp_path, processor_id, capsys):
    src = write_video(tmp_path / "in.mp4", frames=6)
    out = tmp_path / f"{processor_id}.mp4"
    args = [
        "transcode",
        str(src),
        "-o",
        str(out),
        "--processor",
        processor_id,
        "--processor-arg",
        "detect_resolution=64",
    ]
    assert main(args) == 0, capsys.readouterr().err
    assert video_timestamps(out) == video_timestamps(src)
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (96, 64)


def test_processor_args_reach_the_detector():
    stage_low = AuxStage(load_detector("canny"), "canny", {"low_threshold": 1, "high_threshold": 2})
    stage_high = AuxStage(load_detector("canny"), "canny", {"low_threshold": 250, "high_threshold": 255})
    frame = torch.from_numpy(pattern_image(128, 96, 0.0))
    low = stage_low(frame[None])[0]["picture"].numpy()
    high = stage_high(frame[None])[0]["picture"].numpy()
    assert low.shape == (1, 96, 128, 3)
    assert (low > 0).sum() > (high > 0).sum()


def random_hed():
    """A checkpoint preprocessor built from random weights, no network."""
    from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector

    torch.manual_seed(0)
    return HEDdetector(ControlNetHED_Apache2().float().eval())


def test_checkpoint_processor_runs_through_the_pipeline_in_file_and_live_mode(tmp_path):
    stage = AuxStage(random_hed(), "softedge_hed", {"detect_resolution": 64})
    src = write_video(tmp_path / "in.mp4", frames=5)
    sink = Collect()
    video = VideoSink(tmp_path / "hed.mkv", "color", PictureSettings())
    Pipeline(VideoSource(str(src)), stage, [sink, video]).run()
    assert [r.frame.index for r in sink.results] == list(range(5))
    assert all(r.maps["picture"].shape == (64, 96, 3) and r.maps["picture"].dtype == np.uint8 for r in sink.results)
    assert len(video_timestamps(tmp_path / "hed.mkv")) == 5
    live = Collect()
    stats = Pipeline(PatternSource("testsrc:96x64@200", frames=40), stage, [live]).run()
    assert stats["frames_out"] + stats["frames_dropped"] == 40


def test_still_images_with_a_preprocessor(tmp_path, capsys):
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), cv2.imread(str(DATA / "golden_input.png")))
    out = tmp_path / "out"
    assert main(["depth", str(tmp_path / "a.png"), "-o", str(out), "--processor", "canny"]) == 0, (
        capsys.readouterr().err
    )
    assert cv2.imread(str(out / "a.png")).shape == (240, 320, 3)
    assert not (out / "a.npz").exists()


def test_offline_checkpoint_processor_names_the_file(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(Exception) as info:
        load_detector("softedge_hed", local_files_only=True)
    text = str(info.value)
    assert "ControlNetHED.pth" in text and "lllyasviel/Annotators" in text and "--processor-weights" in text


def test_unknown_processor_lists_choices():
    with pytest.raises(ConfigError, match="choose metric3d or one of: .*canny"):
        load_detector("nope")


def test_metric_format_needs_metric3d(tmp_path, capsys):
    src = write_video(tmp_path / "in.mp4", frames=2)
    assert (
        main(["transcode", str(src), "-o", str(tmp_path / "o.mkv"), "--processor", "canny", "--format", "metric16"])
        == 1
    )
    assert "needs Metric3D" in capsys.readouterr().err


def test_metric3d_detector_matches_the_comfyui_node(checkpoint):
    golden = np.load(DATA / "golden_vit_small_comfy.npz")
    detector = Metric3DDetector.from_pretrained(str(checkpoint.parent), filename=checkpoint.name).to("cpu")
    image = np.asarray(Image.open(DATA / "golden_input.png").convert("RGB"))
    depth, normal = detector(image, detect_resolution=240, fx=1000, fy=1000, output_type="np")
    assert np.abs(depth.astype(int) - golden["comfy_depth_u8"]).max() <= 1
    assert np.abs(normal.astype(int) - golden["comfy_normal_u8"]).max() <= 1
    only_depth = detector(Image.fromarray(image[:100, :150]), detect_resolution=64, depth_and_normal=False)
    assert isinstance(only_depth, Image.Image) and min(only_depth.size) == 64


def test_metric3d_detector_accepts_rgba_and_local_files(checkpoint):
    detector = Metric3DDetector.from_pretrained(str(checkpoint), filename="metric_depth_vit_small_800k.pth")
    rgba = np.zeros((60, 80, 4), np.uint8)
    depth, normal = detector(rgba, detect_resolution=128)
    assert depth.shape == (128, 171, 3) and normal.shape == (128, 171, 3) and depth.dtype == np.uint8
