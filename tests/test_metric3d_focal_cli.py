"""End to end: the focal length reaches the metres and every sidecar with its source; point clouds and
Rerun recordings come out of the commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL.TiffImagePlugin import IFDRational

from streamer.api import build_sinks, file_sink, still_image_sinks
from streamer.cli.main import main
from streamer.config import load_config
from streamer.errors import SinkError
from streamer.sinks.ply import PlySink
from streamer.sinks.rerun import RerunSink

from conftest import TINY_INPUT, encode_images, write_video
from test_focal import APPLE_F35, jpeg_with_exif
from test_rerun import need_rerun, read_columns

plyfile = pytest.importorskip("plyfile")

TINY = f"{TINY_INPUT[0]}x{TINY_INPUT[1]}"
W, H = 96, 64


def run(checkpoint: Path, command: str, *args: str) -> int:
    return main([command, *args, "--checkpoint", str(checkpoint), "--input-size", TINY, "--device", "cpu"])


def f35_pixels(f35: float, width: int, height: int) -> float:
    """The diagonal convention of focal.py: a 35 mm frame's 43.27 mm diagonal is the image's."""
    return f35 * math.hypot(width, height) / math.hypot(36, 24)


def vertex_count(path: Path) -> int:
    return len(plyfile.PlyData.read(str(path))["vertex"].data)


def test_exif_focal_reaches_the_point_cloud_and_its_sidecar(tmp_path, checkpoint, capsys):
    photo = jpeg_with_exif(tmp_path / "photo.jpg", (W, H), {0xA405: 26})
    out = tmp_path / "out"
    assert run(checkpoint, "depth", str(photo), "-o", str(out), "--format", "ply") == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    expected = f35_pixels(26, W, H)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["format"] == "ply" and meta["focal_source"] == "exif" and "26" in meta["focal_note"]
    assert meta["fx"] == pytest.approx(expected) and meta["fy"] == pytest.approx(expected)
    assert meta["intrinsics_last_frame"] == pytest.approx({"fx": expected, "fy": expected, "cx": 47.5, "cy": 31.5})
    assert vertex_count(out / "photo.ply") > 0.9 * W * H
    npz = np.load(out / "photo.npz")
    assert str(npz["focal_source"]) == "exif" and float(npz["fx"]) == pytest.approx(expected, rel=1e-6)
    assert f"fx={expected:.1f}" in err and "(exif: EXIF FocalLengthIn35mmFilm 26 mm)" in err
    assert "warning" not in err


def test_without_exif_the_focal_is_assumed_and_said_once(tmp_path, checkpoint, capsys):
    plain = [jpeg_with_exif(tmp_path / "a.jpg", (W, H), {}), jpeg_with_exif(tmp_path / "b.jpg", (H, W), {})]
    out = tmp_path / "out"
    assert run(checkpoint, "depth", *map(str, plain), "-o", str(out), "--format", "metric16") == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), err  # two images, one warning
    assert "approximate" in warnings[0] and "--fx/--fy" in warnings[0] and "--hfov" in warnings[0]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["focal_source"] == "assumed" and "approximate" in meta["focal_note"]
    assumed = (W / 2) / math.tan(math.radians(35))  # 70 deg across the long side
    for name in ("a", "b"):  # b is portrait: the same camera turned, the same focal
        npz = np.load(out / f"{name}.npz")
        assert str(npz["focal_source"]) == "assumed" and float(npz["fx"]) == pytest.approx(assumed, rel=1e-6)
    assert "focal_per_image" not in meta  # all alike


def test_photos_from_different_cameras_keep_their_own_focal(tmp_path, checkpoint, capsys):
    photos = [
        jpeg_with_exif(tmp_path / "0.jpg", (W, H), {0xA405: 26}),
        jpeg_with_exif(tmp_path / "1.jpg", (W, H), {0xA405: 50}),
        jpeg_with_exif(tmp_path / "2.jpg", (W, H), {}),
    ]
    out = tmp_path / "out"
    args = ["depth", *map(str, photos), "-o", str(out), "--format", "ply", "--stride", "8"]
    assert run(checkpoint, *args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "(exif: EXIF FocalLengthIn35mmFilm 26 mm)" in err  # the source line: the first image
    assert len([line for line in err.splitlines() if line.startswith("warning: ")]) == 1  # said mid-run, once
    per_image = json.loads((out / "metadata.json").read_text())["focal_per_image"]
    assert {name: f["focal_source"] for name, f in per_image.items()} == {"0": "exif", "1": "exif", "2": "assumed"}
    assert per_image["1"]["fx"] == pytest.approx(f35_pixels(50, W, H))
    assert per_image["0"]["fx"] == pytest.approx(f35_pixels(26, W, H))


def test_each_image_keeps_its_own_focal_in_its_sidecar_across_calls(tmp_path, checkpoint, capsys):
    out = tmp_path / "out"
    first = jpeg_with_exif(tmp_path / "wide.jpg", (W, H), {0xA405: 26})
    assert run(checkpoint, "depth", str(first), "-o", str(out), "--format", "gray") == 0, capsys.readouterr().err
    # a second call into the same folder: a cropped photo whose size tags are the camera's (4:3, 10x)
    tags = {0x920A: IFDRational(6, 1), 0xA20E: IFDRational(800, 1), 0xA210: 3, 0xA002: 10 * W, 0xA003: 10 * W * 3 // 4}
    second = jpeg_with_exif(tmp_path / "crop.jpg", (W, H), tags)
    assert run(checkpoint, "depth", str(second), "-o", str(out), "--format", "gray") == 0, capsys.readouterr().err
    wide, crop = (json.loads((out / f"{name}.json").read_text()) for name in ("wide", "crop"))
    assert wide["focal_source"] == crop["focal_source"] == "exif"
    assert wide["fx"] == wide["fy"] == pytest.approx(f35_pixels(26, W, H))  # the first call's, kept
    # 6 mm x 80 px/mm = 480 px at 960 wide; the 96x64 file spans the 960x720 frame's width: 48 px, fx = fy
    assert crop["fx"] == crop["fy"] == pytest.approx(48.0)
    assert "another aspect" in crop["focal_note"] and "full width" in crop["focal_note"]
    assert crop["intrinsics"] == pytest.approx([48.0, 48.0, 47.5, 31.5])
    assert float(np.load(out / "crop.npz")["fx"]) == pytest.approx(48.0)


def test_given_fx_wins_over_exif(tmp_path, checkpoint, capsys):
    photo = jpeg_with_exif(tmp_path / "photo.jpg", (W, H), {0xA405: 26})
    out = tmp_path / "out"
    assert run(checkpoint, "depth", str(photo), "-o", str(out), "--fx", "500") == 0, capsys.readouterr().err
    meta = json.loads((out / "metadata.json").read_text())
    assert (meta["fx"], meta["fy"], meta["focal_source"]) == (500.0, 500.0, "given")
    assert "focal_note" not in meta and "fx=500.0 fy=500.0 px (given)" in capsys.readouterr().err


def test_exif_orientation_6_comes_out_upright(tmp_path, checkpoint, capsys):
    photo = jpeg_with_exif(tmp_path / "turned.jpg", (W, H), {0xA405: 26}, orientation=6)
    out = tmp_path / "out"
    assert run(checkpoint, "depth", str(photo), "-o", str(out), "--format", "gray") == 0, capsys.readouterr().err
    npz = np.load(out / "turned.npz")
    assert npz["depth"].shape == (W, H)  # stored landscape, shown (and processed) portrait
    assert float(npz["fx"]) == pytest.approx(f35_pixels(26, H, W))


def test_comfy_mode_keeps_the_nodes_1000_px(tmp_path, checkpoint, capsys):
    photo = jpeg_with_exif(tmp_path / "photo.jpg", (W, H), {0xA405: 26})
    out = tmp_path / "out"
    args = ["depth", str(photo), "-o", str(out), "--comfy", "--resolution", "64"]
    assert run(checkpoint, *args) == 0, capsys.readouterr().err
    meta = json.loads((out / "metadata.json").read_text())
    assert (meta["fx"], meta["fy"], meta["focal_source"]) == (1000.0, 1000.0, "given")
    assert "ComfyUI" in meta["focal_note"]
    assert meta["format"] == "npz" and meta["units"] == "metres"  # the metric sink owns the sidecar


@pytest.mark.parametrize(
    ("comfy", "fmt", "processor"),
    [
        (True, "color", "metric3d"),
        (False, "color", "metric3d"),
        (False, "ply", "metric3d"),
        (False, "npz", "metric3d"),
        (False, "gray", "canny"),
        (True, "color", "canny"),
    ],
)
def test_one_sink_writes_each_sidecar_of_depth(tmp_path, comfy, fmt, processor):
    """Two sinks writing metadata.json raced in their threads (a rename of one's temporary file failed)."""
    cfg = load_config(None, {"model": {"processor": processor}, "output": {"format": fmt}})
    sinks = still_image_sinks(cfg, tmp_path, comfy=comfy)
    assert len([s for s in sinks if s.metadata_path is not None]) == 1
    assert len([s for s in sinks if getattr(s, "image_sidecars", False)]) == 1  # NAME.json beside each image


def video_with_focal_metadata(path: Path, frames: int = 3) -> Path:
    """A QuickTime file carrying Apple's 35 mm equivalent key, as an iPhone writes it."""
    images = []
    for i in range(frames):
        image = np.full((H, W, 3), 40 * i, np.uint8)
        image[:, : W // 2] = 200
        images.append(image)
    return encode_images(
        path, images, codec="mpeg4", options={"movflags": "use_metadata_tags"}, metadata={APPLE_F35: "26"}
    )


def test_transcode_to_point_clouds_with_stride_and_video_metadata_focal(tmp_path, checkpoint, capsys):
    src = video_with_focal_metadata(tmp_path / "clip.mov")
    out = tmp_path / "clouds"
    args = [str(src), "-o", str(out), "--format", "ply", "--stride", "4", "--resolution", "32"]
    assert run(checkpoint, "transcode", *args) == 0, capsys.readouterr().err
    clouds = sorted(out.glob("frame_*.ply"))
    assert [p.name for p in clouds] == [f"frame_{i:06d}.ply" for i in range(3)]
    assert all(0 < vertex_count(p) <= 12 * 8 for p in clouds)  # output 48x32, every 4th pixel
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["stride"] == 4 and meta["frames"] == 3 and meta["focal_source"] == "metadata"
    fx = f35_pixels(26, W, H)
    assert meta["fx"] == pytest.approx(fx)  # at the source size: the metres' focal
    # at the output size (half the source), pixel centres at integers
    assert meta["intrinsics_last_frame"] == pytest.approx({"fx": fx / 2, "fy": fx / 2, "cx": 23.5, "cy": 15.5})


def test_transcode_records_every_frame_to_rerun(tmp_path, checkpoint, capsys):
    need_rerun()
    src = write_video(tmp_path / "in.mp4", frames=4, size=(W, H))
    rrd = tmp_path / "x.rrd"
    args = [
        str(src),
        "-o",
        str(tmp_path / "depth.mkv"),
        "--format",
        "metric16",
        "--fx",
        "300",
        "--rerun-save",
        str(rrd),
    ]
    assert run(checkpoint, "transcode", *args) == 0, capsys.readouterr().err
    columns = read_columns(rrd)
    assert sorted(columns["/camera"]["frame"]) == [0, 1, 2, 3]
    for matrix in columns["/camera"]["Pinhole:image_from_camera"]:
        np.testing.assert_allclose(np.ravel(matrix), [300, 0, 0, 0, 300, 0, 47.5, 31.5, 1])
    assert sorted(columns["/camera/depth"]["frame"]) == [0, 1, 2, 3]
    assert sorted(columns["/world/points"]["frame"]) == [0, 1, 2, 3]  # points are on by default


def test_config_turns_on_point_clouds_and_rerun(tmp_path):
    cfg = load_config(
        None,
        {
            "output": {"path": str(tmp_path / "clouds"), "format": "ply", "ply_stride": 3, "min_confidence": 0.2},
            "rerun": {"save": str(tmp_path / "x.rrd"), "stride": 2},
        },
    )
    ply, rerun = build_sinks(cfg)
    assert isinstance(ply, PlySink) and (ply.stride, ply.min_confidence, ply.normals) == (3, 0.2, False)
    assert isinstance(rerun, RerunSink) and (rerun.spawn, rerun.connect, rerun.stride) == (False, None, 2)
    assert not rerun.live and rerun.points  # a recording keeps every frame; points are on by default
    viewer = build_sinks(load_config(None, {"rerun": {"enabled": True, "connect": "rerun+http://h:9876/proxy"}}))[0]
    assert viewer.live and not viewer.spawn and viewer.connect == "rerun+http://h:9876/proxy"
    with pytest.raises(SinkError, match="not a video"):
        file_sink(load_config(None, {"output": {"format": "ply"}}), tmp_path / "clouds.mp4")
    with pytest.raises(SinkError, match="single file"):
        file_sink(load_config(None, {"output": {"format": "ply"}}), tmp_path / "cloud.ply")


@pytest.mark.parametrize("command", ["preview", "virtualcam", "serve", "transcode"])
def test_live_and_file_commands_offer_rerun(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--rerun", "--rerun-connect", "--rerun-save"))
    if command == "transcode":
        assert all(flag in out for flag in ("ply", "--stride", "--min-confidence", "--ply-normals"))
