"""The source protocol: stream info up front, then frames until the end or a stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from fractions import Fraction

from streamer.types import Frame, StreamInfo


def frame_rate(fps: float | None) -> Fraction | None:
    """A rate given as a float as an exact fraction (29.97 -> 2997/100, 30000/1001 from its float), or None."""
    return Fraction(fps).limit_denominator(1001) if fps else None


class Source:
    info: StreamInfo

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; safe to call more than once."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
