"""Virtual camera through the real pyvirtualcam.Camera, preview window under a virtual display."""

from __future__ import annotations

import cv2

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pyvirtualcam

from streamer.engine.pipeline import Pipeline
from streamer.errors import SinkError, StopRequested
from streamer.focal import FocalResolver
from streamer.processors.metric3d import Metric3DProcessor, Metric3DStage
from streamer.sinks import PreviewSink, VirtualCameraSink
from streamer.sinks.preview import opencv_gui_backend
from streamer.sources import PatternSource
from streamer.views import PictureSettings

from conftest import TINY_INPUT, missing_tool

REPO = Path(__file__).resolve().parent.parent


class RecordingBackend:
    """A pyvirtualcam backend that keeps what the camera would show."""

    received: list[np.ndarray] = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        self.width, self.height = width, height
        RecordingBackend.received = []

    def send(self, frame):
        RecordingBackend.received.append(frame.reshape(self.height, self.width, 3).copy())

    def close(self):
        pass

    def device(self):
        return "recorder"

    def native_fourcc(self):
        return None


@pytest.fixture
def stage(small_model):
    return Metric3DStage(Metric3DProcessor(small_model, TINY_INPUT), FocalResolver(1000.0, 1000.0))


@pytest.fixture
def recorder():
    pyvirtualcam.register_backend("test-recorder", RecordingBackend)
    yield RecordingBackend
    pyvirtualcam.camera.BACKENDS.pop("test-recorder", None)


def test_virtual_camera_receives_letterboxed_frames_in_order(stage, recorder):
    sink = VirtualCameraSink(PictureSettings("color"), 160, 90, 30.0, backend="test-recorder")
    source = PatternSource("testsrc:96x64@30", frames=6, live=False)  # 3:2 into 16:9 -> side bars
    Pipeline(source, stage, [sink]).run()
    frames = recorder.received
    assert len(frames) >= 6 and all(f.shape == (90, 160, 3) for f in frames)
    assert frames[0][:, :10].max() == 0 and frames[0][:, 40:120].std() > 0  # black bars left and right
    assert sink.frames_sent == len(frames)


def test_virtual_camera_repeats_the_last_frame_when_the_model_is_slow(stage, recorder):
    sink = VirtualCameraSink(PictureSettings("gray"), 64, 48, 50.0, backend="test-recorder")
    Pipeline(PatternSource("testsrc:96x64@4", frames=3), stage, [sink]).run()  # 4 fps into a 50 fps camera
    assert len(recorder.received) > 3


def test_missing_virtual_camera_backend_says_what_to_install(stage):
    sink = VirtualCameraSink(PictureSettings(), backend="v4l2loopback", device="/dev/video99")
    with pytest.raises(SinkError) as info:
        sink.open(PatternSource("testsrc").info, None)
    assert "v4l2loopback" in str(info.value)


def test_installed_opencv_has_a_gui_backend():
    """opencv-python (GUI) must win over controlnet_aux's opencv-python-headless."""
    assert opencv_gui_backend() is not None, cv2.getBuildInformation()


def test_preview_without_display_points_to_other_sinks(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SinkError, match="no display.*transcode.*virtualcam"):
        PreviewSink(PictureSettings()).open(PatternSource("testsrc").info, None)


@pytest.fixture
def virtual_display(monkeypatch):
    if shutil.which("Xvfb") is None:
        missing_tool("Xvfb is not installed (apt-get install xvfb)")
    display = ":97"
    server = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", "640x480x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    yield display
    server.terminate()
    server.wait(5)


def test_preview_window_shows_frames(stage, virtual_display):
    sink = PreviewSink(PictureSettings("side-by-side"), window="streamer-test")
    Pipeline(PatternSource("testsrc:96x64@20", frames=5), stage, [sink]).run()
    assert sink.frames_shown >= 1
    assert os.environ["DISPLAY"] == virtual_display


def test_preview_keys_switch_view_colormap_and_quit():
    sink = PreviewSink(PictureSettings("color", "turbo"))
    sink.handle_key(ord("v"))
    sink.handle_key(ord("c"))
    assert (sink.picture.view, sink.picture.colormap) == ("normal", "inferno")
    with pytest.raises(StopRequested):
        sink.handle_key(ord("q"))


def launch_preview(tmp_path, window: str, record, **env: str) -> subprocess.Popen:
    """`streamer preview` of a test pattern (null stage) in the named window, recording to `record`,
    in a process of its own that xdotool can drive; `env` adds to its environment."""
    if shutil.which("xdotool") is None:
        missing_tool("xdotool is not installed (apt-get install xdotool)")
    args = ["preview", "--source", "testsrc:96x64@15", "--record", str(record), "--processor", "null"]
    args += ["--device", "cpu", "--config", str(write_window_config(tmp_path, window))]
    environment = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", *args], env=environment, stderr=subprocess.PIPE, text=True
    )


def test_quitting_the_preview_with_q_finishes_its_recording(tmp_path, virtual_display):
    """A person's q on a live preview ends the recording completely (not .partial), exit 0."""
    rec = tmp_path / "rec.mp4"
    window = "streamer-quit-test"
    proc = launch_preview(tmp_path, window, rec)
    try:
        found = window_of(proc, window)
        time.sleep(1.0)  # a few frames recorded
        subprocess.run(["xdotool", "windowactivate", "--sync", found], capture_output=True)
        subprocess.run(["xdotool", "key", "--window", found, "q"], check=True)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "QFont" not in err and "font" not in err.lower(), err  # Qt's font warnings are no concern of a user
    assert rec.exists() and not (tmp_path / "rec.partial.mp4").exists(), err
    assert json.loads(rec.with_suffix(".json").read_text())["complete"] is True


def test_a_right_click_in_the_real_window_calibrates_the_recording(tmp_path, virtual_display):
    """In a real window under Xvfb, driven by xdotool: metres typed, a right click on the picture,
    and every later metre is scaled; the recording's sidecar says from which frame a click's factor
    applies, and the factor is saved for this camera (streamer/calibration.py)."""
    rec = tmp_path / "rec.mkv"
    window = "streamer-calibrate-test"
    proc = launch_preview(tmp_path, window, rec, STREAMER_CONFIG_DIR=str(tmp_path / "config"))

    def xdotool(*words: str) -> str:
        return subprocess.run(["xdotool", *words], capture_output=True, text=True).stdout

    try:
        found = window_of(proc, window)
        time.sleep(1.0)  # frames shown: the window measures on the newest one
        xdotool("windowactivate", "--sync", found)
        for key in ("2", "period", "5"):
            time.sleep(0.3)  # the window reads keys between frames: one at a time
            xdotool("key", "--window", found, key)
        geometry = dict(line.strip().split(": ", 1) for line in xdotool("getwindowgeometry", found).splitlines()[1:])
        width, height = (int(v) for v in geometry["Geometry"].split("x"))
        xdotool("mousemove", "--window", found, str(width // 4), str(height // 2))  # on the picture's left half
        time.sleep(0.5)
        xdotool("click", "3")
        time.sleep(1.0)  # later frames carry the factor
        xdotool("key", "Escape")  # Qt's windows open a context menu on a right click too: close it
        xdotool("windowactivate", "--sync", found)
        xdotool("key", "--window", found, "q")
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    changes = json.loads(rec.with_suffix(".json").read_text()).get("scale_changes", [])
    assert [c["scale_source"] for c in changes] == ["none", "click"], err
    saved = json.loads((tmp_path / "config" / "streamer" / "calibration.json").read_text())
    assert saved["testsrc:96x64@15"]["scale"] == pytest.approx(changes[-1]["scale"], rel=1e-5) != 1.0


def window_of(proc: subprocess.Popen, window: str) -> str:
    """The X window id of the preview named `window`, once `proc` has opened it (within 60 s)."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.3)
        search = subprocess.run(["xdotool", "search", "--name", window], capture_output=True, text=True)
        if search.stdout.split():
            return search.stdout.split()[0]
    raise AssertionError("the preview window did not appear")


def write_window_config(tmp_path, window: str):
    path = tmp_path / "window.yaml"
    path.write_text(f"preview:\n  window: {window}\n")
    return path


def test_qt_gets_a_font_folder_that_exists_and_a_users_choice_is_kept(monkeypatch, tmp_path):
    from streamer.sinks.preview import FONT_SUFFIXES, point_qt_at_fonts

    monkeypatch.setenv("QT_QPA_FONTDIR", str(tmp_path / "cv2" / "qt" / "fonts"))  # what OpenCV's wheel sets
    point_qt_at_fonts()
    folder = os.environ["QT_QPA_FONTDIR"]
    if folder.startswith(str(tmp_path)):
        missing_tool("no system fonts to point Qt at (apt-get install fonts-dejavu-core)")
    assert any(name.lower().endswith(FONT_SUFFIXES) for name in os.listdir(folder))
    monkeypatch.setenv("QT_QPA_FONTDIR", str(tmp_path))
    point_qt_at_fonts()
    assert os.environ["QT_QPA_FONTDIR"] == str(tmp_path)
