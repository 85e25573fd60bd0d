"""A synthetic moving test pattern, paced like a camera, for machines without one and for tests."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from fractions import Fraction

import numpy as np

from streamer.errors import SourceError
from streamer.sources.base import Source, frame_rate
from streamer.types import Frame, StreamInfo

MICROSECONDS = Fraction(1, 1_000_000)
PATTERN = re.compile(r"^testsrc(?::(\d+)x(\d+))?(?:@([\d.]+))?$")


def pattern_image(width: int, height: int, t: float) -> np.ndarray:
    """A colour ramp floor with a disc moving in front of it: something with depth-like structure."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = (x / width * 255).astype(np.uint8)
    image[..., 1] = (y / height * 255).astype(np.uint8)
    image[..., 2] = 128
    cx = width * (0.5 + 0.3 * np.sin(t))
    cy = height * (0.5 + 0.2 * np.cos(t * 0.7))
    disc = (x - cx) ** 2 + (y - cy) ** 2 < (min(width, height) / 5) ** 2
    image[disc] = (255, 240, 200)
    return image


class PatternSource(Source):
    """`testsrc[:WxH][@FPS]`; live (paced, timestamps from the monotonic clock) unless `live=False`."""

    def __init__(
        self,
        spec: str = "testsrc",
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        frames: int | None = None,
        live: bool | None = None,
    ) -> None:
        match = PATTERN.match(spec)
        if not match:
            raise SourceError(f"bad test source {spec!r}", hint="use testsrc, testsrc:640x480 or testsrc:640x480@30")
        w, h, rate = match.groups()
        self.width = width or int(w or 640)
        self.height = height or int(h or 480)
        self.fps = fps or float(rate or 30)
        self.limit = frames
        live = True if live is None else live
        rate = frame_rate(self.fps)
        self.info = StreamInfo(
            self.width, self.height, MICROSECONDS if live else 1 / rate, rate, live, frames, "testsrc"
        )

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        start = time.monotonic()
        index = 0
        while not stop.is_set() and (self.limit is None or index < self.limit):
            t = index / self.fps
            image = pattern_image(self.width, self.height, t)  # made before its time, as a camera's frame is
            if self.info.live:
                delay = start + t - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                now = time.monotonic()
                pts = int((now - start) * 1_000_000)
            else:
                now, pts = time.monotonic(), index
            yield Frame(image, index, pts, self.info.time_base, now)
            index += 1
