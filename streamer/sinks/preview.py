"""A desktop window with the depth view and an fps/latency overlay.

Keys: q or Esc quits, v switches the view, c cycles the colormap; in the keyed view [ and ] move
the band's far edge, b steps the background, f turns the depth of field on or off. The mouse measures (the
distance under the pointer, a left click twice: between two points); digits typed then a right
click calibrate ("this point is D metres away", streamer/calibration.py). The window lives on the main
thread (macOS allows GUI windows nowhere else; Linux runs the same path): the engine feeds this
sink from the thread that runs the pipeline, and `idle` keeps the window responsive while a
slow model works. The overlay is drawn on the window's own copy, never on a shared picture.
"""

from __future__ import annotations

import cv2

import math
import os
import re
import sys

import numpy as np

from streamer.calibration import intrinsics, point_3d
from streamer.effect_settings import LIVE_BACKGROUNDS, change
from streamer.errors import ConfigError, SinkError, StopRequested
from streamer.legend import blend, colormap_colors, legend_picture
from streamer.sinks.base import Sink
from streamer.types import METRIC16_SCALE, Result, StreamInfo
from streamer.views import COLORMAPS, VIEW_FORMATS, PictureSettings, side_by_side

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
    needs = frozenset({"picture", "depth_mm", "picture_range"})
    idle_interval = 0.03  # pump window events this often while no frame arrives

    def __init__(self, picture: PictureSettings | None = None, window: str = "streamer") -> None:
        self.picture = picture or PictureSettings("side-by-side")
        self.window = window
        self.frames_shown = 0
        self._window_open = False
        self.calibration = None  # the run's Calibration (api.run_calibration): a right click sets it
        self.source_width = 0
        self.pointer: tuple[int, int] | None = None
        self.clicks: list[tuple[int, int]] = []  # the last two left clicks
        self.typed = ""  # digits typed for a calibration
        self.note = ""
        self._newest: Result | None = None

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
        self.source_width = info.width

    def _open_window(self) -> None:
        """On the main thread, like every other call on the window (Qt hangs across threads)."""
        try:
            cv2.namedWindow(self.window, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise SinkError(f"cannot open a window: {str(exc).splitlines()[0]}", hint=HEADLESS_HINT) from exc
        self._window_open = True
        cv2.setMouseCallback(self.window, self.on_mouse)

    def overlay(self, picture: np.ndarray) -> np.ndarray:
        """The fps/latency line, drawn on a copy: the picture may be shared with other outputs."""
        picture = picture.copy()
        line = f"{self.picture.view} {self.picture.colormap}  {self.stats.summary_line()}"
        for row, text in enumerate([line, *self.readout()]):
            y = 24 + 22 * row
            cv2.putText(picture, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(picture, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        span = self._newest.maps.get("picture_range") if self._newest is not None else None
        if span is not None and np.isfinite(span).all() and picture.ndim == 3 and picture.shape[2] == 3:
            colors = colormap_colors(self.picture.colormap, self.picture.view == "gray")
            plate = legend_picture(colors, round(float(span[0]), 2), round(float(span[1]), 2), picture.shape[1] // 3)
            plate = plate[: picture.shape[0] // 3]
            blend(picture, plate, picture.shape[0] - plate.shape[0], picture.shape[1] - plate.shape[1])
        return picture

    def point(self, x: int, y: int) -> tuple[int, int, float | None] | None:
        """A window pixel -> the depth pixel it shows and its metres (side-by-side: either half)."""
        depth = self._newest.maps.get("depth_mm") if self._newest is not None else None
        if depth is None:
            return None
        h, w = depth.shape
        x = x % w if side_by_side(self._newest.maps.get("picture"), depth) else x  # the frame's own view
        if not (0 <= x < w and 0 <= y < h):
            return None
        return x, y, float(depth[y, x]) * METRIC16_SCALE if depth[y, x] else None

    def readout(self) -> list[str]:
        """The overlay's measuring lines: under the pointer, between two clicks, what is typed."""
        lines = []
        here = self.point(*self.pointer) if self.pointer else None
        if here is not None:
            lines.append(f"{here[2]:.3f} m at {here[0]},{here[1]}" if here[2] else "no depth here")
        if len(self.clicks) == 2:
            a, b = (self.point(*c) for c in self.clicks)
            if a and b and a[2] and b[2]:
                h, w = self._newest.maps["depth_mm"].shape
                k = intrinsics(self._newest.meta, w, h, self.source_width)
                between = math.dist(point_3d(*a, k), point_3d(*b, k))
                lines.append(f"between the clicks: {between:.3f} m")
        if self.typed:
            lines.append(f"this point is {self.typed} m: right-click it")
        return lines + ([self.note] if self.note else [])

    def on_mouse(self, event: int, x: int, y: int, flags: int, param) -> None:
        """OpenCV's mouse callback (on the main thread, inside waitKey)."""
        if event == cv2.EVENT_MOUSEMOVE:
            self.pointer = (x, y)
        elif event == cv2.EVENT_LBUTTONDOWN:
            self.clicks = [*self.clicks[-1:], (x, y)]
        elif event == cv2.EVENT_RBUTTONDOWN and self.typed:
            here = self.point(x, y)
            try:
                metres = float(self.typed)
            except ValueError:
                metres = 0.0
            self.typed = ""
            if self.calibration is None or here is None or not here[2] or not metres > 0:
                self.note = "calibration: type the distance in metres, then right-click a point with depth"
                return
            self.note = f"scale x{self.calibration.calibrate(here[2], metres):.4f}"

    def write(self, result: Result) -> None:
        if not self._window_open:
            self._open_window()
        self._newest = result
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
        elif chr(key) in "[]bf":
            self.change_effects(chr(key))
        elif chr(key) in "0123456789.":
            self.typed += chr(key)
        elif key == 8:  # backspace
            self.typed = self.typed[:-1]

    def change_effects(self, key: str) -> None:
        """[ and ] move the keyed band's far edge by 10 cm, b steps the background, f turns the depth
        of field on (focused mid-band) or off. The whole set is swapped: the renderer reads it per batch."""
        e = self.picture.effects
        if key in "[]":
            far = max(e.near + 0.1, e.far + (0.1 if key == "]" else -0.1))
            changes = {"keep": f"{e.near}:{far:.2f}"}
        elif key == "b":
            choices = LIVE_BACKGROUNDS
            step = (choices.index(e.background) + 1) % len(choices) if e.background in choices else 0
            changes = {"background": choices[step]}
        else:
            changes = {"focus": "off" if e.focus is not None else f"{(e.near + e.far) / 2:g}"}  # > 0 at any band
        try:
            self.picture.update(effects=change(e, changes))
        except ConfigError as exc:  # a key never ends the run: the window says why nothing changed
            self.note = exc.one_line()
            return
        self.note = (
            f"keep {self.picture.effects.near:g}:{self.picture.effects.far:g} m, {self.picture.effects.background}"
        )
        if self.picture.effects.focus is not None:
            self.note += f", focus {self.picture.effects.focus:g} m"

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
