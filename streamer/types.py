"""What flows between stages: frames from sources, depth results to sinks, and the end-of-stream mark."""

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

    @property
    def seconds(self) -> float:
        return float(self.pts * self.time_base)


@dataclass
class DepthResult:
    """Metric outputs for one frame, all float32 at the output size (H, W).

    depth: metres; normal: (H, W, 3) unit vectors in camera coordinates (x right, y down, z forward);
    kappa: normal concentration (higher = more certain); confidence: raw depth confidence.
    """

    frame: Frame
    depth: np.ndarray
    normal: np.ndarray
    kappa: np.ndarray
    confidence: np.ndarray
    fx: float
    fy: float
    meta: dict = field(default_factory=dict)


class EndOfStream:
    """Sentinel put on a queue after the last item; `error` is set when the producer failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
