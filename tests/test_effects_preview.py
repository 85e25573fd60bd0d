"""Measuring in the preview window by mouse and keys, and its legend (no window needed: OpenCV's
mouse callback and key handler are called as waitKey would call them)."""

from __future__ import annotations

import cv2

import math
from fractions import Fraction

import numpy as np
import pytest

from streamer.calibration import Calibration
from streamer.engine.stats import Stats
from streamer.sinks.preview import PreviewSink
from streamer.types import Frame, Result
from streamer.views import PictureSettings

H, W = 60, 80


def newest(view: str = "color") -> Result:
    depth = np.full((H, W), 3000, np.uint16)
    depth[:, : W // 2] = 1000
    picture = np.full((H, 2 * W if view == "side-by-side" else W, 3), 90, np.uint8)
    maps = {"picture": picture, "depth_mm": depth, "picture_range": np.array([0.5, 4.0], np.float32)}
    frame = Frame(picture, 0, 0, Fraction(1, 30), 0.0)
    return Result(frame, maps, {"intrinsics": [100.0, 100.0, W / 2, H / 2]})


def preview(view: str = "color") -> PreviewSink:
    sink = PreviewSink(PictureSettings(view))
    sink.stats = Stats()
    sink._newest = newest(view)
    return sink


def test_pointer_and_two_clicks_read_metres_and_3d_distance():
    sink = preview()
    sink.on_mouse(cv2.EVENT_MOUSEMOVE, 60, 30, 0, None)
    assert sink.readout() == ["3.000 m at 60,30"]
    sink.on_mouse(cv2.EVENT_LBUTTONDOWN, 10, 30, 0, None)
    sink.on_mouse(cv2.EVENT_LBUTTONDOWN, 60, 30, 0, None)
    a = ((10.5 - 40) * 1.0 / 100, (30.5 - 30) * 1.0 / 100, 1.0)
    b = ((60.5 - 40) * 3.0 / 100, (30.5 - 30) * 3.0 / 100, 3.0)
    assert sink.readout()[1] == f"between the clicks: {math.dist(a, b):.3f} m"


def test_side_by_side_reads_either_half():
    sink = preview("side-by-side")
    sink.on_mouse(cv2.EVENT_MOUSEMOVE, W + 10, 5, 0, None)
    assert sink.readout() == ["1.000 m at 10,5"]


def test_typed_metres_and_a_right_click_calibrate(tmp_path):
    sink = preview()
    sink.calibration = Calibration(camera="0", store=tmp_path / "c.json")
    for key in "2.25":
        sink.handle_key(ord(key))
    assert sink.readout()[-1] == "this point is 2.25 m: right-click it"
    sink.on_mouse(cv2.EVENT_RBUTTONDOWN, 60, 30, 0, None)
    assert sink.calibration.scale == pytest.approx(0.75)
    assert sink.calibration.source == "click" and (tmp_path / "c.json").exists()
    sink.on_mouse(cv2.EVENT_RBUTTONDOWN, 60, 30, 0, None)  # nothing typed: a right click does nothing
    assert sink.calibration.scale == pytest.approx(0.75)


def test_overlay_carries_the_legend_where_the_view_shows_metres():
    sink = preview()
    drawn = sink.overlay(sink._newest.maps["picture"])
    corner = drawn[H - 10 :, W - W // 3 :]
    assert (corner != 90).any()
    sink._newest.maps["picture_range"] = np.array([np.nan, np.nan], np.float32)  # normals, keyed
    assert (sink.overlay(sink._newest.maps["picture"])[H - 10 :, W - W // 3 :] == 90).all()


def test_keys_change_the_band_background_and_focus_live():
    sink = preview("keyed")
    before = sink.picture.effects
    sink.handle_key(ord("]"))
    assert sink.picture.effects.far == pytest.approx(before.far + 0.1) and sink.picture.effects is not before
    sink.handle_key(ord("b"))
    assert sink.picture.effects.background == "color:#00B140"  # the step after blur
    sink.handle_key(ord("f"))
    assert sink.picture.effects.focus == pytest.approx((before.near + before.far + 0.1) / 2, abs=0.01)
    sink.handle_key(ord("f"))
    assert sink.picture.effects.focus is None


def test_focus_key_on_a_band_of_millimetres_focuses_inside_it():
    """f focuses mid-band: on a band narrower than a centimetre that used to round to 0 m, a
    ConfigError raised by a key press, which ended the run."""
    from streamer.effect_settings import EffectSettings

    sink = PreviewSink(PictureSettings("keyed", effects=EffectSettings(0.0, 0.005)))
    sink.stats = Stats()
    sink.handle_key(ord("f"))
    assert sink.picture.effects.focus == pytest.approx(0.0025)


def test_the_pointer_reads_the_shown_frames_view_not_the_one_just_picked():
    """v switches the view from the next batch on: until then the window still shows side by side,
    and a pointer on its right half must read the depth there (the page's /measure alike)."""
    from aiohttp import web

    from streamer.sinks.web_measure import pixel

    sink = preview("side-by-side")
    sink.picture.update(view="color")  # picked now; the newest frame is still side by side
    sink.on_mouse(cv2.EVENT_MOUSEMOVE, W + 10, 5, 0, None)
    assert sink.readout() == ["1.000 m at 10,5"]
    depth, picture = sink._newest.maps["depth_mm"], sink._newest.maps["picture"]
    assert pixel({"x": W + 10, "y": 5}, picture, depth) == (10, 5)
    with pytest.raises(web.HTTPBadRequest):  # a frame in one view: the right of it is outside
        pixel({"x": W + 10, "y": 5}, picture[:, :W], depth)
