"""Rerun (rerun.io): the live camera, its picture, its metric depth and optionally a point cloud.

Per frame, on the frame's own timelines ("time": pts x time_base seconds from the stream's start;
"frame": the frame index), this logs the pinhole camera at `camera` (image_from_camera from
fx, fy, cx, cy at the output size, camera axes RDF = OpenCV), the RGB picture at `camera/image`,
the depth in metres at `camera/depth`, and with `points` a coloured cloud at `world/points` (same
camera frame, so it lines up with the camera in the 3D view).

rerun-sdk is an optional extra, imported when the sink opens; the sink writes to its own
`RecordingStream`, never the process-global one, so two sinks or a host application do not mix.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from streamer.errors import SinkError
from streamer.sinks.base import Sink, check_output, partial_path
from streamer.sinks.ply import backproject, colours_of, intrinsics_of, sample, valid_mask
from streamer.types import Result, StreamInfo

log = logging.getLogger(__name__)

APPLICATION_ID = "streamer"
INSTALL_HINT = 'pip install "streamer[rerun]" (or pip install rerun-sdk)'
DEFAULT_PORT = 9876  # the viewer's gRPC port
PROBE_TIMEOUT_S = 2.0
FLUSH_TIMEOUT_S = 10.0  # at close: a viewer that went away must not hold the run's end for long


def import_rerun() -> Any:
    """The `rerun` module, or a SinkError that says how to install it."""
    try:
        return importlib.import_module("rerun")
    except ImportError as exc:
        raise SinkError("the Rerun output needs the rerun-sdk package", hint=INSTALL_HINT) from exc


def check_reachable(url: str) -> None:
    """Refuse an unreachable viewer at open: the SDK would only say so after the model ran."""
    parts = urlsplit(url if "://" in url else f"rerun+http://{url}")
    host, port = parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORT
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise SinkError(
            f"no Rerun viewer answers at {url} ({exc.strerror or exc})",
            hint="start one with `rerun`, or give its URL like rerun+http://127.0.0.1:9876/proxy",
        ) from exc


def check_display() -> None:
    """A spawned viewer needs a screen; on a headless Linux box it would die and drop every frame."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise SinkError(
            "no display for a Rerun viewer (neither DISPLAY nor WAYLAND_DISPLAY is set)",
            hint="record with --rerun-save FILE.rrd, or connect to a viewer on another machine",
        )


def flush(rec: Any) -> None:
    """Send what is buffered, waiting at most FLUSH_TIMEOUT_S where the SDK lets us bound it."""
    try:
        rec.flush(timeout_sec=FLUSH_TIMEOUT_S)
    except TypeError:  # rerun-sdk < 0.24: flush(blocking=True)
        rec.flush()


def set_frame_time(rec: Any, index: int, seconds: float) -> None:
    """Put the next logs on the frame's timelines, with whichever time API the installed SDK has."""
    if hasattr(rec, "set_time"):  # rerun-sdk >= 0.23
        rec.set_time("frame", sequence=index)
        rec.set_time("time", duration=seconds)  # media time from the stream's start, not a wall-clock date
    else:
        rec.set_time_sequence("frame", index)
        rec.set_time_seconds("time", seconds)


class RerunSink(Sink):
    """Streams frames to a Rerun viewer (`spawn` one, or `connect` to a URL) and/or an `.rrd` file (`save`).

    `connect` is a gRPC URL such as `rerun+http://127.0.0.1:9876/proxy`. The file is written as
    NAME.partial.rrd and renamed when the run completes, like the video outputs. `stride` thins the
    point cloud (every Nth pixel in both axes); `min_confidence` drops uncertain points. A viewer alone
    is a live output (it may skip frames to stay current); with a file, every frame is kept.
    """

    def __init__(
        self,
        spawn: bool = False,
        connect: str | None = None,
        save: str | Path | None = None,
        points: bool = False,
        stride: int = 4,
        min_confidence: float = 0.0,
        overwrite: bool = False,
    ) -> None:
        if not (spawn or connect or save):
            raise SinkError("the Rerun output needs a viewer or a file", hint="use --rerun or --rerun-save FILE.rrd")
        if stride < 1:
            raise SinkError(f"point stride {stride} is below 1", hint="use 1 for every pixel, 2 for every other, ...")
        self.spawn, self.connect = spawn, connect
        self.save = Path(save) if save is not None else None
        self.points, self.stride, self.min_confidence = points, stride, min_confidence
        self.overwrite = overwrite
        self.live = self.save is None
        self.needs = frozenset({"depth", "image"} | ({"confidence"} if points else set()))
        self.name = f"rerun:{self.save.name if self.save else connect or 'viewer'}"
        self.rec: Any = None
        self.rr: Any = None
        self.frames_written = 0

    def open(self, info: StreamInfo, stats) -> None:
        if self.save is not None:
            check_output(self.save, self.overwrite)
        self.rr = rr = import_rerun()
        if self.connect:
            check_reachable(self.connect)
        if self.spawn:
            check_display()
        self.rec = rr.RecordingStream(APPLICATION_ID, recording_id=str(uuid.uuid4()))
        try:
            self._attach(rr, self.rec)
        except (RuntimeError, ValueError, OSError) as exc:  # what the SDK raises for targets it cannot use
            raise SinkError(f"cannot open the Rerun output: {exc}", hint="check the viewer URL or run `rerun`") from exc
        # The 3D view's axes are the camera's (OpenCV: right, down, forward), so points sit in front of the camera.
        self.rec.log("/", rr.ViewCoordinates.RDF, static=True)
        log.info("rerun: logging %s (rerun-sdk %s)", self.name, getattr(rr, "__version__", "?"))

    def _attach(self, rr: Any, rec: Any) -> None:
        """Send the recording to every requested target; several at once need `set_sinks` (SDK >= 0.23)."""
        targets = [t for t in (self.spawn, self.connect, self.save) if t]
        if len(targets) > 1 and not hasattr(rec, "set_sinks"):
            raise SinkError("this rerun-sdk sends to one target at a time", hint="pip install -U rerun-sdk")
        if len(targets) == 1:
            if self.save is not None:
                rec.save(partial_path(self.save))
            elif self.connect:
                (rec.connect_grpc if hasattr(rec, "connect_grpc") else rec.connect)(self.connect)
            else:
                rec.spawn()
            return
        sinks = []
        if self.spawn:
            rec.spawn(connect=False)
            sinks.append(rr.GrpcSink())
        if self.connect:
            sinks.append(rr.GrpcSink(self.connect))
        if self.save is not None:
            sinks.append(rr.FileSink(partial_path(self.save)))
        rec.set_sinks(*sinks)

    def write(self, result: Result) -> None:
        rr, rec = self.rr, self.rec
        frame = result.frame
        set_frame_time(rec, frame.index, float(frame.pts * frame.time_base))
        depth = result.depth
        h, w = depth.shape[:2]
        fx, fy, cx, cy = intrinsics_of(result)
        rec.log(
            "camera",
            rr.Pinhole(
                focal_length=[fx, fy], principal_point=[cx, cy], width=w, height=h, camera_xyz=rr.ViewCoordinates.RDF
            ),
        )
        # Copies: the arrays are views of the engine's pinned slot, refilled once write() returns, and an
        # SDK may hand Arrow buffers to its sender thread without copying them (as the web and virtual
        # camera sinks copy what they keep). backproject and sample return fresh arrays already.
        image = colours_of(result).copy()
        rec.log("camera/image", rr.Image(image))
        rec.log("camera/depth", rr.DepthImage(np.array(depth, dtype=np.float32, order="C"), meter=1.0))
        if self.points:
            mask = valid_mask(depth, result.maps.get("confidence"), self.min_confidence)
            xyz = backproject(depth, fx, fy, cx, cy, self.stride, mask)
            rec.log("world/points", rr.Points3D(xyz, colors=sample(image, self.stride, mask)))
        self.frames_written += 1

    def close(self, complete: bool) -> None:
        if self.rec is None:
            return
        rec, self.rec = self.rec, None
        try:
            flush(rec)
        except RuntimeError as exc:  # a viewer that closed or never answered: the file is still complete
            log.warning("rerun: not everything reached the viewer: %s", exc)
        finally:
            rec.disconnect()  # closes the file sink: the .rrd gets its footer
        if self.save is not None and complete:
            os.replace(partial_path(self.save), self.save)
