"""What flows between stages: frames from sources, results to sinks, and the end-of-stream mark."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np


@dataclass
class Frame:
    """One RGB uint8 (H, W, 3) image with its place in time: integer pts in units of `time_base`."""

    image: np.ndarray
    index: int
    pts: int
    time_base: Fraction
    capture_time: float  # time.monotonic() when the source produced it
    name: str = ""  # for image sources: the file's stem, used to name outputs

    @property
    def seconds(self) -> float:
        return float(self.pts * self.time_base)


@dataclass
class Result:
    """A processor's outputs for one frame, as host arrays at the output size.

    Metric3D gives `depth` (H, W) float32 metres, `normal` (H, W, 3) unit vectors in camera
    coordinates (x right, y down, z forward), `kappa` (H, W) normal concentration and `confidence`
    (H, W). Image processors (ControlNet preprocessors) give `image` (H, W, 3) uint8.
    """

    frame: Frame
    maps: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    @property
    def depth(self) -> np.ndarray:
        return self.maps["depth"]


@dataclass(frozen=True)
class StreamInfo:
    """What a source knows before its first frame; sinks are opened with it."""

    width: int
    height: int
    time_base: Fraction
    rate: Fraction | None  # nominal frames per second, None when unknown
    live: bool
    frame_count: int | None = None
    name: str = ""


class EndOfStream:
    """Sentinel put on a queue after the last item."""
