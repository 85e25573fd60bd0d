"""Transcoding through the CLI: frame counts, timestamps, audio, metric round trips, sidecars."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest

from streamer.cli.main import main
from streamer.engine.pipeline import Pipeline
from streamer.focal import FocalResolver
from streamer.processors.metric3d import Metric3DProcessor, Metric3DStage
from streamer.sinks import Sink
from streamer.sinks.images import decode_exr
from streamer.sources import VideoSource

from conftest import TINY_INPUT, video_timestamps, write_video

TINY = f"{TINY_INPUT[0]}x{TINY_INPUT[1]}"


def transcode(checkpoint, *args: str) -> int:
    return main(["transcode", *args, "--checkpoint", str(checkpoint), "--input-size", TINY, "--device", "cpu"])


RAW = ("--stabilize", "off")  # round trips compare with the model's own depth, not the stabilised one


class Collect(Sink):
    needs = frozenset({"depth"})

    def __init__(self):
        self.depths = []

    def write(self, result):
        self.depths.append(result.depth)


def reference_depths(small_model, path):
    """The model's depth for each input frame, computed directly through the pipeline API."""
    sink = Collect()
    stage = Metric3DStage(Metric3DProcessor(small_model, TINY_INPUT), FocalResolver(1000.0, 1000.0))
    Pipeline(VideoSource(str(path)), stage, [sink]).run()
    return sink.depths


def test_mp4_keeps_frames_timestamps_and_audio(tmp_path, checkpoint):
    src = write_video(tmp_path / "in.mp4", frames=12, audio=True)
    out = tmp_path / "out.mp4"
    assert transcode(checkpoint, str(src), "-o", str(out)) == 0
    assert video_timestamps(out) == video_timestamps(src)
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert (c.streams.video[0].width, c.streams.video[0].height) == (96, 64)
        assert c.streams.audio[0].codec_context.name == "aac"
    with av.open(str(src)) as a, av.open(str(out)) as b:
        src_audio = [bytes(p) for p in a.demux(audio=0) if p.size]
        out_audio = [bytes(p) for p in b.demux(audio=0) if p.size]
    assert out_audio == src_audio  # copied untouched
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["frames"] == 12 and sidecar["complete"] is True
    assert not (tmp_path / "out.partial.mp4").exists()


def test_variable_frame_rate_is_kept(tmp_path, checkpoint):
    pts = [0, 100, 150, 400, 410, 900, 1000, 1300]
    src = write_video(tmp_path / "vfr.mkv", frames=8, pts=pts, time_base=Fraction(1, 1000), codec="ffv1")
    out = tmp_path / "vfr_out.mkv"
    assert transcode(checkpoint, str(src), "-o", str(out)) == 0
    assert video_timestamps(out) == pytest.approx(video_timestamps(src), abs=1e-3)
    assert video_timestamps(src) == pytest.approx([p / 1000 for p in pts])


def test_metric16_decodes_back_to_the_model_depth_within_1mm(tmp_path, checkpoint, small_model):
    src = write_video(tmp_path / "in.mp4", frames=5, audio=True)
    out = tmp_path / "depth16.mkv"
    assert transcode(checkpoint, str(src), "-o", str(out), "--format", "metric16", "--fx", "40", *RAW) == 0
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "ffv1"
        frames = [f.to_ndarray() for f in c.decode(stream)]
        assert c.streams.audio  # audio came along
    assert all(f.dtype == np.uint16 for f in frames)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    expected = reference_depths(small_model, src)
    scale = 40 / 1000  # fx=40 instead of the 1000 the reference used
    for frame, depth in zip(frames, expected, strict=True):
        metres = frame.astype(np.float64) * sidecar["scale_to_metres"]
        assert (
            np.abs(metres - np.clip(depth * scale, 0, sidecar["max_metres"])).max() <= 0.001
        )  # within 1 mm (rounding to mm is 0.5 mm; float32 scaling adds a little)
    for key in ("units", "scale_to_metres", "fx", "fy", "backbone", "checkpoint"):
        assert key in sidecar
    assert sidecar["units"] == "millimetres" and sidecar["fx"] == 40.0 and sidecar["backbone"] == "vit-small"


def test_npz_and_exr_sequences_hold_float_metres(tmp_path, checkpoint, small_model):
    src = write_video(tmp_path / "in.mp4", frames=3)
    expected = reference_depths(small_model, src)
    for fmt in ("npz", "exr"):
        out = tmp_path / fmt
        # the reference used fx = 1000 and the raw depth (no stabiliser)
        assert transcode(checkpoint, str(src), "-o", str(out), "--format", fmt, "--fx", "1000", *RAW) == 0
        files = sorted(out.glob(f"frame_*.{fmt}"))
        assert len(files) == 3
        for path, depth in zip(files, expected, strict=True):
            if fmt == "npz":
                data = np.load(path)
                got = data["depth"]
                assert data["normal"].shape == (64, 96, 3) and float(data["fx"]) == 1000.0
                assert {"confidence", "kappa"} <= set(data.files)
            else:
                got = decode_exr(path.read_bytes())
            assert got.dtype == np.float32
            assert np.abs(got - depth).max() <= 1e-3
        meta = json.loads((out / "metadata.json").read_text())
        assert meta["units"] == "metres" and meta["frames"] == 3


@pytest.mark.parametrize("fmt", ["gray", "color", "normal", "side-by-side", "comfy-depth"])
def test_picture_formats_make_playable_videos(tmp_path, checkpoint, fmt):
    src = write_video(tmp_path / "in.mp4", frames=4)
    out = tmp_path / f"{fmt}.mp4"
    assert transcode(checkpoint, str(src), "-o", str(out), "--format", fmt) == 0
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 4
    width = {"side-by-side": 192}.get(fmt, 96)
    if fmt == "comfy-depth":
        assert frames[0].shape[0] == 512  # the node's resolution default
    else:
        assert frames[0].shape == (64, width, 3)
    assert frames[0].std() > 0


def test_start_and_end_select_a_time_range(tmp_path, checkpoint):
    src = write_video(tmp_path / "in.mp4", frames=20)
    out = tmp_path / "cut.mkv"
    assert transcode(checkpoint, str(src), "-o", str(out), "--start", "0.5", "--end", "1.2") == 0
    # the frames from 0.5 to 1.1 s, on a timeline that starts at 0
    assert video_timestamps(out) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], abs=1e-3)


def test_rotation_metadata_is_honoured(tmp_path, checkpoint):
    src = write_video(tmp_path / "rot.mp4", frames=3, rotation=90)
    source = VideoSource(str(src))
    assert (source.info.width, source.info.height) == (64, 96)
    out = tmp_path / "rot_out.mp4"
    assert transcode(checkpoint, str(src), "-o", str(out)) == 0
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (64, 96)
    source.close()


def test_existing_output_is_refused_unless_overwrite(tmp_path, checkpoint, capsys):
    src = write_video(tmp_path / "in.mp4", frames=2)
    out = tmp_path / "o.mp4"
    out.write_bytes(b"keep me")
    assert transcode(checkpoint, str(src), "-o", str(out)) == 1
    assert out.read_bytes() == b"keep me"
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert transcode(checkpoint, str(src), "-o", str(out), "--overwrite") == 0
    assert len(video_timestamps(out)) == 2


def test_audio_the_container_cannot_hold_is_reencoded_and_said(tmp_path, checkpoint, capsys):
    src = tmp_path / "pcm.mkv"
    with av.open(str(src), "w") as c:
        video = c.add_stream("ffv1", rate=10)
        video.width, video.height = 64, 48
        audio = c.add_stream("pcm_s16le", rate=8000)
        audio.layout = "mono"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 50 * i, np.uint8), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                c.mux(packet)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 4000), np.int16), format="s16", layout="mono")
        samples.sample_rate, samples.pts = 8000, 0
        for packet in audio.encode(samples) + audio.encode(None) + video.encode(None):
            c.mux(packet)
    out = tmp_path / "out.mp4"
    assert transcode(checkpoint, str(src), "-o", str(out)) == 0
    assert "audio re-encoded pcm_s16le -> aac" in capsys.readouterr().err
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        assert sum(1 for _ in c.decode(video=0)) == 5
    with av.open(str(out)) as c:
        assert sum(f.samples for f in c.decode(audio=0)) >= 4000  # the encoder's tail was flushed


def test_metric16_png_sequence_round_trip(tmp_path, checkpoint, small_model):
    import cv2

    src = write_video(tmp_path / "in.mp4", frames=2)
    out = tmp_path / "png16"
    assert transcode(checkpoint, str(src), "-o", str(out), "--format", "metric16", "--fx", "300", *RAW) == 0
    files = sorted(out.glob("frame_*.png"))
    expected = reference_depths(small_model, src)
    for path, depth in zip(files, expected, strict=True):
        mm = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert mm.dtype == np.uint16 and mm.shape == (64, 96)
        metres = depth.astype(np.float64) * 0.3  # fx=300 instead of the reference's 1000
        assert metres.max() < 65.535
        assert (
            np.abs(mm * 0.001 - metres).max() <= 0.001
        )  # within 1 mm (rounding to mm is 0.5 mm; float32 scaling adds a little)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["units"] == "millimetres" and meta["scale_to_metres"] == 0.001


def test_video_carries_its_metadata_inside_the_container(tmp_path, checkpoint):
    src = write_video(tmp_path / "in.mp4", frames=2)
    out = tmp_path / "m.mkv"
    assert transcode(checkpoint, str(src), "-o", str(out), "--format", "metric16", "--fx", "725") == 0
    with av.open(str(out)) as c:
        comment = {k.lower(): v for k, v in c.metadata.items()}["comment"]
    embedded = json.loads(comment)
    assert embedded["fx"] == 725.0 and embedded["units"] == "millimetres" and embedded["backbone"] == "vit-small"
