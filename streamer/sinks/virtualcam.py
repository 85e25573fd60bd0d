"""A virtual camera for OBS / video-call apps through pyvirtualcam, at a fixed size and rate."""

from __future__ import annotations

import sys
import time

import numpy as np
import pyvirtualcam

from streamer.errors import SinkError
from streamer.sinks.base import Sink
from streamer.types import Result, StreamInfo
from streamer.views import PictureSettings

INSTALL_HINT = {
    "linux": "install v4l2loopback and load it: sudo modprobe v4l2loopback devices=1 exclusive_caps=1",
    "win32": "install OBS Studio (28+) and start its virtual camera once, or install Unity Capture",
    "darwin": "install OBS Studio (28+) and start its virtual camera once",
}


class VirtualCameraSink(Sink):
    """The picture arrives letterboxed to the camera's size (done on the device); this only sends."""

    live = True
    needs = frozenset({"picture"})

    def __init__(
        self,
        picture: PictureSettings | None = None,
        width: int = 1280,
        height: int = 720,
        fps: float = 30.0,
        backend: str = "auto",
        device: str | None = None,
    ) -> None:
        self.picture = picture or PictureSettings()
        self.picture.fit = (width, height)
        self.width, self.height, self.fps = width, height, fps
        self.backend = None if backend == "auto" else backend
        self.device = device
        self.idle_interval = 1.0 / fps
        self.name = "virtualcam"
        self.frames_sent = 0
        self.camera = None
        self._last: np.ndarray | None = None
        self._last_sent = 0.0

    def open(self, info: StreamInfo, stats) -> None:
        try:
            self.camera = pyvirtualcam.Camera(
                self.width,
                self.height,
                self.fps,
                fmt=pyvirtualcam.PixelFormat.RGB,
                backend=self.backend,
                device=self.device,
            )
        except KeyError:
            available = ", ".join(pyvirtualcam.camera.BACKENDS) or "none"
            raise SinkError(
                f"virtual camera backend {self.backend!r} does not exist on this system", hint=f"available: {available}"
            ) from None
        except (RuntimeError, ValueError, OSError) as exc:
            hint = INSTALL_HINT.get(sys.platform, INSTALL_HINT["linux"])
            reason = "; ".join(str(exc).splitlines()) or type(exc).__name__
            raise SinkError(f"no usable virtual camera ({reason})", hint=hint) from exc

    def _send(self, picture: np.ndarray) -> None:
        self.camera.send(picture)
        self._last_sent = time.monotonic()
        self.frames_sent += 1

    def write(self, result: Result) -> None:
        self._last = result.maps["picture"].copy()  # kept for repeats: the engine reuses its buffer
        self._send(self._last)

    def idle(self) -> None:
        """Apps expect a steady rate: repeat the last picture while the model is slower than fps."""
        if self._last is not None and time.monotonic() - self._last_sent >= self.idle_interval:
            self._send(self._last)

    def close(self, complete: bool) -> None:
        if self.camera is not None:
            self.camera.close()
