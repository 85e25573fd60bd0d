"""Cameras through OpenCV: by index or device path, MJPG where offered, a one-frame driver buffer."""

from __future__ import annotations

import cv2

import logging
import threading
import time
from collections.abc import Iterator

from streamer.errors import SourceError
from streamer.sources.base import Source, frame_rate
from streamer.sources.testsrc import MICROSECONDS
from streamer.types import Frame, StreamInfo

log = logging.getLogger(__name__)
STALL_TIMEOUT_S = 3.0  # no frame for this long mid-run: the camera is gone


def open_capture(device: int | str) -> cv2.VideoCapture:
    """cv2.VideoCapture without OpenCV's own warnings on stderr (we report failures ourselves)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(device)
    finally:
        cv2.utils.logging.setLogLevel(level)


class WebcamSource(Source):
    def __init__(
        self,
        device: str | int,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        frames: int | None = None,
    ) -> None:
        self.device = int(device) if str(device).isdigit() else str(device)
        self.limit = frames
        self.cap = open_capture(self.device)
        if not self.cap.isOpened():
            self.cap.release()
            raise SourceError(
                f"camera {self.device} could not be opened (missing, or busy in another program)",
                hint="check `streamer doctor` for the cameras found, close other apps using it, or try --source 1",
            )
        self.cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        if width:
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if fps:
            self.cap.set(cv2.CAP_PROP_FPS, fps)
        self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        w = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        rate = self.cap.get(cv2.CAP_PROP_FPS) or None
        fourcc = int(self.cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("ascii", "replace")
        self.negotiated = f"camera {self.device}: {w}x{h} @ {rate or '?'} fps, {fourcc}"
        log.info(self.negotiated)
        self.info = StreamInfo(
            w,
            h,
            MICROSECONDS,
            frame_rate(rate),
            True,
            None,
            f"camera {self.device}",
        )

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        start = time.monotonic()
        index = 0
        last_ok = time.monotonic()
        while not stop.is_set() and (self.limit is None or index < self.limit):
            ok, bgr = self.cap.read()
            now = time.monotonic()
            if not ok or bgr is None:
                if now - last_ok > STALL_TIMEOUT_S:
                    raise SourceError(
                        f"camera {self.device} stopped delivering frames for {STALL_TIMEOUT_S:.0f} s",
                        hint="check the cable or driver, then start again",
                    )
                time.sleep(0.01)
                continue
            last_ok = now
            yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index, int((now - start) * 1e6), MICROSECONDS, now)
            index += 1

    def close(self) -> None:
        self.cap.release()
