"""Depth and normal maps to 8-bit pictures: gray, colour, normals, side-by-side.

The display range must not flicker from frame to frame, so by default it follows the 2nd..98th
depth percentiles through an exponential moving average; a fixed metric range or a per-frame
min-max are available on request.
"""

from __future__ import annotations

import cv2

from dataclasses import dataclass, field

import numpy as np

from streamer.errors import ConfigError

VIEW_FORMATS = ("gray", "color", "normal", "side-by-side")
RANGE_MODES = ("auto", "fixed", "frame")
COLORMAPS = {
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "jet": cv2.COLORMAP_JET,
    "bone": cv2.COLORMAP_BONE,
}


@dataclass
class DisplayRange:
    """near/far in metres for mapping depth to 0..255; `update` moves them per frame."""

    mode: str = "auto"
    near: float = 0.1
    far: float = 10.0
    smoothing: float = 0.1  # EMA weight of the newest frame in auto mode
    _initialised: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in RANGE_MODES:
            raise ConfigError(f"range mode {self.mode!r} is unknown", hint=f"use one of {RANGE_MODES}")
        if not 0 <= self.near < self.far:
            raise ConfigError(f"display range {self.near}..{self.far} m is empty", hint="need 0 <= near < far")

    def update(self, depth: np.ndarray) -> tuple[float, float]:
        if self.mode == "fixed":
            return self.near, self.far
        sample = depth[::4, ::4]
        sample = sample[sample > 0]
        if sample.size == 0:
            return self.near, self.far
        if self.mode == "frame":
            lo, hi = float(sample.min()), float(sample.max())
        else:
            lo, hi = (float(v) for v in np.percentile(sample, (2, 98)))
        hi = max(hi, lo + 1e-3)
        if self.mode == "auto" and self._initialised:
            a = self.smoothing
            lo, hi = (1 - a) * self.near + a * lo, (1 - a) * self.far + a * hi
        self.near, self.far, self._initialised = lo, hi, True
        return lo, hi


def depth_to_u8(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """Near = 255, far = 0 (the ControlNet depth convention), linear in metres."""
    v = (far - depth) * (255.0 / (far - near))
    return np.clip(v, 0, 255).astype(np.uint8)


def gray(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    return cv2.cvtColor(depth_to_u8(depth, near, far), cv2.COLOR_GRAY2RGB)


def colormap_code(name: str) -> int:
    if name not in COLORMAPS:
        raise ConfigError(f"colormap {name!r} is unknown", hint=f"use one of {', '.join(COLORMAPS)}")
    return COLORMAPS[name]


def color(depth: np.ndarray, near: float, far: float, colormap: str = "turbo") -> np.ndarray:
    bgr = cv2.applyColorMap(depth_to_u8(depth, near, far), colormap_code(colormap))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def normal_rgb(normal: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) in [-1, 1] -> RGB (x, y, z) in 0..255."""
    return np.clip((normal + 1.0) * 127.5, 0, 255).astype(np.uint8)


class Renderer:
    """One output picture per result, in a view format; keeps the display range between frames."""

    def __init__(self, view: str = "color", colormap: str = "turbo", display: DisplayRange | None = None):
        if view not in VIEW_FORMATS:
            raise ConfigError(f"view {view!r} is unknown", hint=f"use one of {', '.join(VIEW_FORMATS)}")
        colormap_code(colormap)  # an unknown name fails now, not on the first frame
        self.view = view
        self.colormap = colormap
        self.display = display or DisplayRange()

    def __call__(self, maps: dict[str, np.ndarray], source: np.ndarray | None = None) -> np.ndarray:
        if "image" in maps:  # an image processor already made the picture
            picture = maps["image"]
        elif self.view == "normal":
            picture = normal_rgb(maps["normal"])
        else:
            near, far = self.display.update(maps["depth"])
            if self.view == "gray":
                picture = gray(maps["depth"], near, far)
            else:
                picture = color(maps["depth"], near, far, self.colormap)
        if self.view == "side-by-side" and source is not None:
            if source.shape[:2] != picture.shape[:2]:
                source = cv2.resize(source, (picture.shape[1], picture.shape[0]), interpolation=cv2.INTER_AREA)
            picture = np.concatenate((source, picture), axis=1)
        return picture
