"""A desktop window with the depth view and an fps/latency overlay.

Keys: q or Esc quits, v switches the view, c cycles the colormap. The window lives on the main
thread (macOS allows GUI windows nowhere else; Linux runs the same path): the engine feeds this
sink from the thread that runs the pipeline, and `idle` keeps the window responsive while a
slow model works. The overlay is drawn on the window's own copy, never on a shared picture.
"""

from __future__ import annotations

import cv2

import os
import re
import sys

import numpy as np

from streamer.errors import SinkError, StopRequested
from streamer.sinks.base import Sink
from streamer.types import Result, StreamInfo
from streamer.views import COLORMAPS, VIEW_FORMATS, PictureSettings

FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".pfb")
SYSTEM_FONT_ROOTS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.local/share/fonts",
    "~/.fonts",
    "/System/Library/Fonts",
    "/Library/Fonts",
)
HEADLESS_HINT = "use `streamer transcode` or `streamer virtualcam` instead, or run under a desktop (xvfb-run for tests)"


def opencv_gui_backend() -> str | None:
    """The highgui backend OpenCV was built with (GTK, QT, WIN32UI, COCOA...), or None if headless."""
    info = cv2.getBuildInformation()
    section = info.split("GUI:", 1)[1].split("\n\n", 1)[0] if "GUI:" in info else ""
    first = section.splitlines()[0].strip() if section else ""
    if first and first.upper() not in ("NONE", "NO"):
        return first
    found = re.findall(r"^\s*(GTK\+?|QT|Win32 UI|Cocoa|Wayland):\s*YES", section, re.M | re.I)
    return found[0] if found else None


def font_directory() -> str | None:
    """A folder that holds font files itself (Qt's font database does not look into subfolders):
    the system's, DejaVu first where it is there."""
    roots = [os.path.expanduser(root) for root in SYSTEM_FONT_ROOTS]
    if os.environ.get("WINDIR"):
        roots.append(os.path.join(os.environ["WINDIR"], "Fonts"))
    for root in roots:
        for folder, subfolders, files in os.walk(root):
            subfolders.sort(key=lambda name: name.lower() not in ("truetype", "dejavu"))
            if any(name.lower().endswith(FONT_SUFFIXES) for name in files):
                return folder
    return None


def point_qt_at_fonts() -> None:
    """OpenCV's Qt wheels point Qt at a font folder of their own (QT_QPA_FONTDIR, set when cv2 is
    imported) that they do not ship, and Qt warns about it on every window ("QFontDatabase: Cannot
    find font directory"). Point it at the system's fonts instead; a folder that exists (the
    user's choice) is kept, and with no fonts found nothing changes (Qt's warning then is true)."""
    chosen = os.environ.get("QT_QPA_FONTDIR")
    if chosen and os.path.isdir(chosen):
        return
    folder = font_directory()
    if folder is not None:
        os.environ["QT_QPA_FONTDIR"] = folder


def has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class PreviewSink(Sink):
    live = True
    main_thread = True
    name = "preview"
    needs = frozenset({"picture"})
    idle_interval = 0.03  # pump window events this often while no frame arrives

    def __init__(self, picture: PictureSettings | None = None, window: str = "streamer") -> None:
        self.picture = picture or PictureSettings("side-by-side")
        self.window = window
        self.frames_shown = 0
        self._window_open = False

    def open(self, info: StreamInfo, stats) -> None:
        if opencv_gui_backend() is None:
            raise SinkError(
                "this OpenCV has no GUI backend (opencv-python-headless won the install)",
                hint="pip install --force-reinstall --no-deps opencv-python",
            )
        if not has_display():
            raise SinkError("no display for the preview window", hint=HEADLESS_HINT)
        if opencv_gui_backend().upper().startswith("QT"):
            point_qt_at_fonts()  # before Qt starts: it reads the folder once
        self.stats = stats

    def _open_window(self) -> None:
        """On the main thread, like every other call on the window (Qt hangs across threads)."""
        try:
            cv2.namedWindow(self.window, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise SinkError(f"cannot open a window: {str(exc).splitlines()[0]}", hint=HEADLESS_HINT) from exc
        self._window_open = True

    def overlay(self, picture: np.ndarray) -> np.ndarray:
        """The fps/latency line, drawn on a copy: the picture may be shared with other outputs."""
        picture = picture.copy()
        line = f"{self.picture.view} {self.picture.colormap}  {self.stats.summary_line()}"
        cv2.putText(picture, line, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(picture, line, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        return picture

    def write(self, result: Result) -> None:
        if not self._window_open:
            self._open_window()
        picture = self.overlay(result.maps["picture"])
        cv2.imshow(self.window, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        self.frames_shown += 1
        self.handle_key(cv2.waitKey(1) & 0xFF)

    def handle_key(self, key: int) -> None:
        if key in (ord("q"), 27):
            raise StopRequested
        if key == ord("v"):
            self.picture.cycle("view", VIEW_FORMATS)
        elif key == ord("c"):
            self.picture.cycle("colormap", COLORMAPS)

    def idle(self) -> None:
        if self._window_open:
            self.handle_key(cv2.waitKey(1) & 0xFF)

    def close(self, complete: bool) -> None:
        if not self._window_open:
            return
        try:
            cv2.destroyWindow(self.window)
            cv2.waitKey(1)
        except cv2.error:
            pass
