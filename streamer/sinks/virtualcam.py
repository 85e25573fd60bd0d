"""A virtual camera for OBS / video-call apps through pyvirtualcam, at a fixed size and rate."""

from __future__ import annotations

import cv2

import sys
import time

import numpy as np
import pyvirtualcam

from streamer.errors import SinkError
from streamer.processors.render import Renderer
from streamer.sinks.base import Sink, render_picture
from streamer.types import Result, StreamInfo

INSTALL_HINT = {
    "linux": "install v4l2loopback and load it: sudo modprobe v4l2loopback devices=1 exclusive_caps=1",
    "win32": "install OBS Studio (28+) and start its virtual camera once, or install Unity Capture",
    "darwin": "install OBS Studio (28+) and start its virtual camera once",
}


def letterbox(picture: np.ndarray, width: int, height: int) -> np.ndarray:
    """Fit into width x height keeping aspect, black bars around."""
    h, w = picture.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(picture, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


class VirtualCameraSink(Sink):
    live = True

    def __init__(
        self,
        renderer: Renderer,
        view: str = "color",
        width: int = 1280,
        height: int = 720,
        fps: float = 30.0,
        backend: str = "auto",
        device: str | None = None,
    ) -> None:
        self.renderer = renderer
        self.view = view
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
        self._last = letterbox(render_picture(self.view, self.renderer, result), self.width, self.height)
        self._send(self._last)

    def idle(self) -> None:
        """Apps expect a steady rate: repeat the last picture while the model is slower than fps."""
        if self._last is not None and time.monotonic() - self._last_sent >= self.idle_interval:
            self._send(self._last)

    def close(self, complete: bool) -> None:
        if self.camera is not None:
            self.camera.close()
