"""A colour bar with metre ticks, so a viewer reads distances off the colours without a readout.

Drawn with OpenCV on the host (text needs a font): the page's `/legend.png`, the preview's overlay
and, with `--legend`, the recordings (the renderer uploads it once per display range and blends it
in on the device). Near is on the left, as the colours run from the near end of the colormap.
"""

from __future__ import annotations

import cv2

import math

import numpy as np

NICE_STEPS = (1, 2, 2.5, 5)  # tick spacings, times a power of ten
MAX_TICKS = 8
FONT = cv2.FONT_HERSHEY_SIMPLEX


def tick_step(span: float, max_ticks: int = MAX_TICKS) -> float:
    """The smallest 'nice' spacing (1, 2, 2.5, 5 x 10^k metres) giving at most `max_ticks` ticks."""
    raw = span / max(1, max_ticks)
    power = 10.0 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for step in NICE_STEPS:
        if step * power >= raw:
            return step * power
    return 10 * power


def ticks(near: float, far: float, max_ticks: int = MAX_TICKS) -> list[float]:
    """Metre values of the ticks between near and far (inclusive), on a nice spacing."""
    step = tick_step(far - near, max_ticks)
    first = math.ceil(near / step - 1e-9) * step
    count = int(math.floor((far - first) / step + 1e-9)) + 1
    return [round(first + i * step, 6) for i in range(max(0, count))]


def label(metres: float) -> str:
    return f"{metres:g}"


def colormap_colors(name: str, gray: bool = False) -> np.ndarray:
    """(256, 3) RGB of a view's levels: OpenCV's colormap, or the gray ramp."""
    levels = np.arange(256, dtype=np.uint8)
    if gray:
        return np.repeat(levels[:, None], 3, axis=1)
    bgr = cv2.applyColorMap(levels.reshape(256, 1), getattr(cv2, f"COLORMAP_{name.upper()}"))[:, 0]
    return np.ascontiguousarray(bgr[:, ::-1])


def legend_picture(colors: np.ndarray, near: float, far: float, width: int, height: int = 0) -> np.ndarray:
    """(H, W, 4) RGBA: a bar of the (256, 3) RGB `colors` (index 255 = near) from near to far metres,
    ticks and labels below, on a half-transparent dark plate; `height` defaults to what fits the text."""
    scale = max(0.35, width / 900)
    (_, text_h), base = cv2.getTextSize("0.5 m", FONT, scale, 1)
    pad = max(3, text_h // 2)
    bar_h = max(6, text_h)
    height = height or pad * 4 + bar_h + text_h + base
    plate = np.zeros((height, width, 4), np.uint8)
    plate[..., 3] = 160
    left, right = pad * 2, width - pad * 2
    t = np.linspace(0.0, 1.0, max(2, right - left))
    plate[pad : pad + bar_h, left : left + t.size, :3] = colors[np.round(255 * (1 - t)).astype(int)][None]
    plate[pad : pad + bar_h, left : left + t.size, 3] = 255
    if far > near:
        values = ticks(near, far, max(2, min(MAX_TICKS, (right - left) // (text_h * 4))))
        for value in values:
            x = left + round((value - near) / (far - near) * (right - left - 1))
            cv2.line(plate, (x, pad), (x, pad + bar_h + pad), (255, 255, 255, 255), 1)
            text = label(value) + (" m" if value == values[-1] else "")
            (w, _), _ = cv2.getTextSize(text, FONT, scale, 1)
            x0 = min(max(0, x - w // 2), width - w)
            cv2.putText(plate, text, (x0, pad * 3 + bar_h + text_h), FONT, scale, (255, 255, 255, 255), 1, cv2.LINE_AA)
    return plate


def blend(picture: np.ndarray, plate: np.ndarray, top: int, left: int) -> np.ndarray:
    """Alpha-blend an RGBA plate into an RGB picture in place at (top, left); returns the picture."""
    h = min(plate.shape[0], picture.shape[0] - top)
    w = min(plate.shape[1], picture.shape[1] - left)
    region = picture[top : top + h, left : left + w].astype(np.float32)
    alpha = plate[:h, :w, 3:4].astype(np.float32) / 255.0
    region += alpha * (plate[:h, :w, :3].astype(np.float32) - region)
    picture[top : top + h, left : left + w] = region.round().astype(np.uint8)
    return picture
