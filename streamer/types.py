"""What flows between stages: frames from sources, results to sinks, and the end-of-stream mark."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from streamer.focal import Focal

METRIC16_SCALE = 0.001  # metres per unit of metric16 pictures: uint16 millimetres


@dataclass
class Frame:
    """One RGB uint8 (H, W, 3) image with its place in time: integer pts in units of `time_base`."""

    image: np.ndarray
    index: int
    pts: int
    time_base: Fraction
    capture_time: float  # time.monotonic() when the source produced it
    name: str = ""  # for image sources: the file's stem, used to name outputs
    # compressed audio packets (PyAV) demuxed with this frame from the same input, in demux order:
    # they travel beside the frames so sinks copy audio without opening the input again
    audio: list = field(default_factory=list)
    # what the source knows of this frame's focal length (its EXIF, the video's metadata), in pixels of
    # this frame; None when it knows nothing. The stage decides (user's values first, see focal.py).
    focal: Focal | None = None

    @property
    def seconds(self) -> float:
        return float(self.pts * self.time_base)


@dataclass
class Result:
    """One sink's arrays for one frame, on the host, at the output size: what the sink `needs`.

    `picture` is the sink's picture (RGB or YUV planes), `depth` (H, W) float32 metres, `depth_mm`
    uint16 millimetres, `normal` (H, W, 3) unit vectors in camera coordinates (x right, y down,
    z forward), `kappa` and `confidence` (H, W), `image` the input frame (see processors/outputs.py).
    """

    frame: Frame
    maps: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)
    # hands the host buffers back to the engine's download ring once the sink is done with them
    release: Callable[[], None] | None = None

    def done(self) -> None:
        if self.release is not None:
            self.release()
            self.release = None

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
    audio: tuple = ()  # the input's audio streams (PyAV), templates for sinks that copy audio
    # where the input's timeline starts (seconds), when it may lie before the first frame: audio
    # that starts first; outputs put 0 there so the A/V offset stays the input's
    start: Fraction | None = None
    focal: Focal | None = None  # the first frame's focal hint, as on Frame: the CLI reports it before the run
