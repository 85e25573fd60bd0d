"""The source protocol: stream info up front, then frames until the end or a stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from streamer.types import Frame, StreamInfo


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
