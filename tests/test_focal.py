"""Focal lengths come from the user, then EXIF, then video metadata, then a flagged assumption."""

from __future__ import annotations

import ast
import logging
import math
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from streamer.errors import ConfigError, SourceError
from streamer.focal import (
    ASSUMED_HFOV_DEG,
    EXIF_IFD,
    Focal,
    FocalResolver,
    exif_upright,
    focal_from_exif,
    focal_from_video_metadata,
    intrinsics_at,
    resolve_focal,
    video_metadata,
)

APPLE_F35 = "com.apple.quicktime.camera.focal_length.35mm_equivalent"


def jpeg_with_exif(
    path: Path, size: tuple[int, int], exif_ifd: dict[int, object], orientation: int = 1, ifd0: dict | None = None
) -> Path:
    """A JPEG whose left third is red, with the given Exif sub-IFD tags, orientation and IFD0 tags (Make, Model)."""
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, : w // 3] = (255, 0, 0)
    exif = Image.Exif()
    exif.update(ifd0 or {})
    if orientation != 1:
        exif[0x0112] = orientation
    if exif_ifd:
        exif.get_ifd(EXIF_IFD).update(exif_ifd)
    Image.fromarray(pixels).save(path, "JPEG", exif=exif, quality=95)
    return path


def test_35mm_equivalent_in_exif_reaches_fx_by_the_diagonal_convention(tmp_path):
    path = jpeg_with_exif(tmp_path / "a.jpg", (400, 300), {0xA405: 26})
    focal = resolve_focal(None, None, None, 400, 300, exif_focal=focal_from_exif(path, 400, 300))
    assert focal.source == "exif" and focal.fx == focal.fy
    assert focal.fx == pytest.approx(26 * 500 / math.hypot(36, 24), rel=1e-9)  # diagonal 500 px <-> 43.27 mm
    assert "26" in focal.note


def test_35mm_equivalent_of_a_3_to_2_image_is_the_long_side_rule(tmp_path):
    path = jpeg_with_exif(tmp_path / "a.jpg", (600, 400), {0xA405: 50})
    assert focal_from_exif(path.read_bytes(), 600, 400).fx == pytest.approx(50 * 600 / 36, rel=1e-9)


def test_focal_length_with_focal_plane_resolution_reaches_fx(tmp_path):
    # 4.2 mm lens on a sensor 5.6 mm wide seen as 400 px: 714.29 px/cm, so fx = 4.2 mm * 71.43 px/mm = 300 px.
    tags = {0x920A: IFDRational(42, 10), 0xA20E: IFDRational(400 * 10000, 5600), 0xA210: 3}
    path = jpeg_with_exif(tmp_path / "b.jpg", (400, 300), tags)
    focal = resolve_focal(None, None, None, 400, 300, exif_focal=focal_from_exif(path, 400, 300))
    assert focal.source == "exif"
    assert focal.fx == pytest.approx(300, rel=1e-4) and focal.fy == pytest.approx(300, rel=1e-4)
    # Resized output: half the pixels, half the focal length.
    assert focal_from_exif(path, 200, 150).fx == pytest.approx(150, rel=1e-4)


def test_focal_plane_resolution_refers_to_the_cameras_pixel_dimensions(tmp_path):
    # Written by a camera at 4000 px wide (inch units), the file downscaled to 400 px.
    tags = {0x920A: IFDRational(42, 10), 0xA20E: IFDRational(4000 * 254, 56), 0xA210: 2, 0xA002: 4000, 0xA003: 3000}
    path = jpeg_with_exif(tmp_path / "c.jpg", (400, 300), tags)
    assert focal_from_exif(path, 400, 300).fx == pytest.approx(300, rel=1e-4)


def test_orientation_6_gives_an_upright_image_of_swapped_size_and_square_pixels(tmp_path):
    # Y resolution written as twice X (a camera's rounding gone wrong): pixels are still square, X counts.
    tags = {0x920A: IFDRational(5, 1), 0xA20E: IFDRational(1000, 1), 0xA20F: IFDRational(2000, 1), 0xA210: 3}
    path = jpeg_with_exif(tmp_path / "d.jpg", (60, 30), tags, orientation=6)
    upright = exif_upright(path)
    assert upright.shape == (60, 30, 3) and upright.dtype == np.uint8
    # Orientation 6 = rotate 90 deg clockwise to view: the stored left third becomes the top third.
    assert upright[:18, :, 0].mean() > 200 and upright[25:, :, 0].mean() < 40
    focal = focal_from_exif(path, 30, 60)
    assert (focal.fx, focal.fy) == (pytest.approx(500), pytest.approx(500))  # 5 mm x 100 px per mm
    assert focal_from_exif(path, 15, 30).fx == pytest.approx(250)


# A camera frame of 4000 x 3000 px whose focal is 3000 px: 6 mm at 500 px per mm (5000 px/cm).
CAMERA_TAGS = {0x920A: IFDRational(6, 1), 0xA20E: IFDRational(5000, 1), 0xA210: 3, 0xA002: 4000, 0xA003: 3000}


@pytest.mark.parametrize(
    "size, expected, side",
    [
        ((400, 400), 400.0, "height"),  # a 1:1 crop of the 4:3 frame spanning its height, resized to 400
        ((400, 225), 300.0, "width"),  # a 16:9 crop spanning its width, resized to 400 wide
        ((1000, 3000), 3000.0, "height"),  # a strip cut out of the full-size frame: no resize
    ],
)
def test_stale_exif_size_of_another_aspect_gives_one_focal_and_says_the_rule(tmp_path, size, expected, side):
    path = jpeg_with_exif(tmp_path / "crop.jpg", size, CAMERA_TAGS)
    focal = focal_from_exif(path, *size)
    assert focal.fx == focal.fy == pytest.approx(expected)
    assert "another aspect" in focal.note and f"full {side}" in focal.note and "4000x3000" in focal.note
    assert focal.note.startswith("EXIF FocalLength 6 mm")


def test_resized_file_with_the_cameras_size_tags_scales_both_axes_alike(tmp_path):
    path = jpeg_with_exif(tmp_path / "small.jpg", (401, 300), CAMERA_TAGS)  # 400.x rounded: same aspect
    focal = focal_from_exif(path, 401, 300)
    assert focal.fx == focal.fy == pytest.approx(300 * 401 / 400)
    assert focal.note == "EXIF FocalLength 6 mm"  # nothing assumed, nothing to say


def test_pixels_turned_by_an_editor_with_unrotated_size_tags(tmp_path):
    path = jpeg_with_exif(tmp_path / "turned.jpg", (300, 400), CAMERA_TAGS)  # orientation 1, tags say 4000x3000
    focal = focal_from_exif(path, 300, 400)
    assert focal.fx == focal.fy == pytest.approx(300)
    assert "turned by 90 deg" in focal.note and "another aspect" not in focal.note


def test_orientation_6_with_size_tags_written_upright(tmp_path):
    # stored landscape 400x300 with orientation 6, the size tags already portrait (3000x4000)
    tags = {**CAMERA_TAGS, 0xA002: 3000, 0xA003: 4000}
    path = jpeg_with_exif(tmp_path / "o6.jpg", (400, 300), tags, orientation=6)
    focal = focal_from_exif(path, 300, 400)  # the upright picture
    assert focal.fx == focal.fy == pytest.approx(300)
    assert "turned by 90 deg" in focal.note and "another aspect" not in focal.note


def test_35mm_equivalent_of_a_cropped_file_refers_to_the_cameras_frame(tmp_path):
    path = jpeg_with_exif(tmp_path / "sq.jpg", (400, 400), {0xA405: 50, 0xA002: 6000, 0xA003: 4000})
    focal = focal_from_exif(path, 400, 400)
    assert focal.fx == focal.fy == pytest.approx(50 * 6000 / 36 * 0.1)  # 3:2 frame, scaled 400 / 4000
    assert "FocalLengthIn35mmFilm 50 mm" in focal.note and "full height" in focal.note


@pytest.mark.parametrize(
    "make, model",
    [("Canon", "Canon EOS 5D Mark II"), ("NIKON CORPORATION", "NIKON D700"), ("Canon", "EOS 5D Mark II")],
)
def test_focal_length_in_mm_alone_takes_a_known_cameras_sensor_width(tmp_path, make, model):
    # both have a 36 mm wide sensor in the table: 50 mm is 50 / 36 of the image's long side
    ifd0 = {0x010F: make, 0x0110: model}
    path = jpeg_with_exif(tmp_path / "cam.jpg", (600, 400), {0x920A: IFDRational(50, 1)}, ifd0=ifd0)
    focal = focal_from_exif(path, 600, 400)
    assert focal.source == "exif" and focal.fx == focal.fy == pytest.approx(50 / 36 * 600)
    assert "36 mm wide sensor" in focal.note and "sensor table" in focal.note
    portrait = jpeg_with_exif(tmp_path / "p.jpg", (400, 600), {0x920A: IFDRational(50, 1)}, ifd0=ifd0)
    assert focal_from_exif(portrait, 400, 600).fx == pytest.approx(50 / 36 * 600)  # the long side either way


def test_focal_length_in_mm_of_an_unknown_camera_is_left_to_the_assumed_field_of_view(tmp_path):
    ifd0 = {0x010F: "Nobody", 0x0110: "Prototype 1"}
    path = jpeg_with_exif(tmp_path / "x.jpg", (600, 400), {0x920A: IFDRational(50, 1)}, ifd0=ifd0)
    assert focal_from_exif(path, 600, 400) is None
    assert resolve_focal(None, None, None, 600, 400, exif_focal=None).source == "assumed"


def test_exif_upright_without_orientation_keeps_the_pixels(tmp_path):
    upright = exif_upright(jpeg_with_exif(tmp_path / "e.jpg", (60, 30), {}))
    assert upright.shape == (30, 60, 3) and upright[:, :15, 0].mean() > 200
    gray16 = tmp_path / "g.png"
    Image.fromarray(np.full((4, 5), 0x8000, np.uint16)).save(gray16)
    assert (exif_upright(gray16) == 0x80).all() and exif_upright(gray16).shape == (4, 5, 3)
    (tmp_path / "bad.jpg").write_bytes(b"not a picture")
    with pytest.raises(SourceError):
        exif_upright(tmp_path / "bad.jpg")


def test_given_values_win_over_exif_and_metadata(tmp_path):
    exif = focal_from_exif(jpeg_with_exif(tmp_path / "a.jpg", (400, 300), {0xA405: 26}), 400, 300)
    meta = focal_from_video_metadata({APPLE_F35: "26"}, 400, 300)
    assert resolve_focal(800, None, None, 400, 300, exif, meta) == Focal(800, 800, "given")
    assert resolve_focal(None, 700, None, 400, 300, exif, meta) == Focal(700, 700, "given")
    hfov = resolve_focal(800, 800, 90, 400, 300, exif, meta)
    assert hfov.source == "given" and hfov.fx == pytest.approx(200)  # (400 / 2) / tan(45 deg)
    assert resolve_focal(None, None, None, 400, 300, exif, meta).source == "exif"
    assert resolve_focal(None, None, None, 400, 300, None, meta).source == "metadata"
    with pytest.raises(ConfigError):
        resolve_focal(-5, None, None, 400, 300)


def test_no_exif_means_an_assumed_field_of_view_with_a_warning(tmp_path, caplog):
    path = jpeg_with_exif(tmp_path / "plain.jpg", (400, 300), {})
    assert focal_from_exif(path, 400, 300) is None
    assert focal_from_exif(b"not an image", 400, 300) is None
    with caplog.at_level(logging.WARNING, logger="streamer.focal"):
        focal = resolve_focal(None, None, None, 400, 300, exif_focal=None)
    assert focal.source == "assumed"
    assert focal.fx == focal.fy == pytest.approx(200 / math.tan(math.radians(ASSUMED_HFOV_DEG / 2)))
    assert "approximate" in focal.note and "--fx/--fy" in focal.note and "--hfov" in focal.note
    assert "\n" not in focal.note and focal.note in caplog.text
    # Portrait frames: the assumed field of view spans the long side.
    assert resolve_focal(None, None, None, 300, 400).fx == pytest.approx(focal.fx)
    assert focal.as_meta()["focal_source"] == "assumed"


def test_quicktime_35mm_equivalent_in_video_metadata_gives_fx():
    focal = focal_from_video_metadata({"major_brand": "qt  ", APPLE_F35: "26"}, 1920, 1080)
    assert focal.source == "metadata" and focal.fx == pytest.approx(26 * math.hypot(1920, 1080) / 43.2666, rel=1e-4)
    assert focal_from_video_metadata({APPLE_F35.upper(): "24.000000"}, 1920, 1080).fx == pytest.approx(
        24 * math.hypot(1920, 1080) / math.hypot(36, 24)
    )
    assert focal_from_video_metadata({"com.android.capture.fps": "30.0"}, 1920, 1080) is None
    assert focal_from_video_metadata({APPLE_F35: "0"}, 1920, 1080) is None


def test_video_metadata_written_by_a_muxer_is_read_back_through_pyav(tmp_path):
    path = tmp_path / "clip.mov"
    with av.open(str(path), "w", options={"movflags": "use_metadata_tags"}) as container:
        container.metadata[APPLE_F35] = "26"
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with av.open(str(path)) as container:
        focal = focal_from_video_metadata(video_metadata(container), 64, 48)
    assert focal is not None and focal.fx == pytest.approx(26 * 80 / math.hypot(36, 24))


def test_resolver_prefers_given_then_the_frames_hint_and_warns_once(caplog):
    exif = Focal(300.0, 300.0, "exif", "EXIF FocalLengthIn35mmFilm 26 mm")
    assert FocalResolver(500.0)(400, 300, exif) == Focal(500.0, 500.0, "given")
    assert FocalResolver(hfov=90.0, note="why")(400, 300, exif).note == "--hfov 90 deg; why"
    heard: list[str] = []
    resolver = FocalResolver(warn=heard.append)
    assert resolver(400, 300, exif) is exif
    with caplog.at_level(logging.DEBUG, logger="streamer.focal"):
        first, again, other = resolver(400, 300), resolver(400, 300), resolver(800, 600)
    assert first.source == other.source == "assumed" and again is first and other.fx == pytest.approx(2 * first.fx)
    assert heard == [first.note]  # once, to the caller that prints it; the log has it only at debug
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with caplog.at_level(logging.WARNING, logger="streamer.focal"):
        FocalResolver()(400, 300)  # no caller to tell: the library logs it
    assert "approximate" in caplog.text
    with pytest.raises(ConfigError):
        FocalResolver(fx=-1.0)  # refused when built, not on the model thread


def test_intrinsics_scale_with_the_output_size_around_the_centre():
    focal = Focal(500.0, 400.0, "given")
    assert intrinsics_at(focal, (300, 400)) == (500.0, 400.0, 199.5, 149.5)
    assert intrinsics_at(focal, (300, 400), (150, 200)) == (250.0, 200.0, 99.5, 74.5)


def test_focal_module_imports_no_torch():
    tree = ast.parse((Path(__file__).resolve().parent.parent / "streamer" / "focal.py").read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "torch" not in roots
