"""Video files and network streams through PyAV: container timestamps, variable frame rate and
rotation kept, `start`/`end` in seconds, truncated inputs decoded as far as they go."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamer.errors import SourceError
from streamer.sources.base import Source
from streamer.types import Frame, StreamInfo

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://", "srt://")
NETWORK_TIMEOUT_S = 10.0


def is_network(uri: str) -> bool:
    return uri.lower().startswith(NETWORK_SCHEMES)


def check_input_file(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"input {path} does not exist", hint="check the path")
    if path.is_dir():
        raise SourceError(
            f"input {path} is a directory", hint="pass a video file (for image folders use `streamer depth`)"
        )
    if path.stat().st_size == 0:
        raise SourceError(
            f"input {path} is empty (0 bytes)", hint="the file was not written completely; use another copy"
        )


def clockwise_rotation(frame: av.VideoFrame) -> int:
    """Clockwise degrees that make the picture upright (from the display matrix, as ffmpeg's autorotate)."""
    return int(round(-(frame.rotation or 0))) % 360


def upright_rgb(frame: av.VideoFrame) -> np.ndarray:
    image = frame.to_ndarray(format="rgb24")
    rotation = clockwise_rotation(frame)
    if rotation:
        image = np.ascontiguousarray(np.rot90(image, k=-(rotation // 90)))
    return image


class VideoSource(Source):
    def __init__(
        self,
        uri: str,
        start: float | None = None,
        end: float | None = None,
        frames: int | None = None,
        live: bool | None = None,
    ) -> None:
        self.uri = uri
        network = is_network(uri)
        if not network:
            check_input_file(Path(uri))
        options = {"rw_timeout": str(int(NETWORK_TIMEOUT_S * 1e6))} if network else {}
        try:
            self.container = av.open(
                uri, options=options, timeout=NETWORK_TIMEOUT_S if network else None, metadata_errors="replace"
            )
        except av.FFmpegError as exc:
            what = "stream" if network else "file"
            raise SourceError(
                f"{uri} could not be opened as a video {what}: {exc.strerror or exc}",
                hint="check the URL and that the server is up"
                if network
                else "is it a video file? try playing it with ffplay",
            ) from exc
        if not self.container.streams.video:
            self.container.close()
            raise SourceError(f"{uri} has no video stream", hint="pass a file with video in it")
        self.stream = self.container.streams.video[0]
        if self.stream.codec_context is None or not self.stream.codec_context.width:
            self.container.close()
            raise SourceError(
                f"{uri}: the video stream cannot be decoded (unknown codec or damaged header)",
                hint="check the file plays in ffplay or VLC; re-encode it if it does",
            )
        self.stream.thread_type = "AUTO"
        self.start, self.end, self.limit = start, end, frames
        self.truncated: str | None = None
        self.corrupt_packets = 0
        rate = self.stream.average_rate or self.stream.guessed_rate
        ctx = self.stream.codec_context
        rotation = 0 if network else self._probe_rotation()
        width, height = (ctx.height, ctx.width) if rotation in (90, 270) else (ctx.width, ctx.height)
        self.info = StreamInfo(
            width,
            height,
            self.stream.time_base or Fraction(1, 90000),
            Fraction(rate) if rate else None,
            network if live is None else live,
            self.stream.frames or None,
            Path(uri).name if not network else uri,
        )

    def _probe_rotation(self) -> int:
        """Rotation of a file's first frame, to report the upright size before decoding starts."""
        rotation = 0
        try:
            for frame in self.container.decode(self.stream):
                rotation = clockwise_rotation(frame)
                break
            self.container.seek(0, stream=self.stream)
        except av.FFmpegError:  # a damaged file may not seek: start over from a fresh demuxer
            self.container.close()
            self.container = av.open(self.uri, metadata_errors="replace")
            self.stream = self.container.streams.video[0]
            self.stream.thread_type = "AUTO"
        return rotation

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        """Decode in order; a corrupt packet is skipped and counted, a broken container ends the stream."""
        tb = self.stream.time_base
        if self.start:
            try:
                self.container.seek(int(self.start / tb), stream=self.stream, backward=True)
            except av.FFmpegError as exc:
                raise SourceError(
                    f"cannot seek to {self.start} s in {self.uri}: {exc.strerror or exc}",
                    hint="drop --start, or remux the file first",
                ) from exc
        index = 0
        last_seconds = None
        packets = self.container.demux(self.stream)
        while not stop.is_set():
            try:
                packet = next(packets, None)
            except av.FFmpegError as exc:
                self.truncated = f"reading stopped after {index} frames: {exc.strerror or exc}"
                break
            if packet is None:
                break
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                self.corrupt_packets += 1
                continue
            for frame in decoded:
                pts = frame.pts if frame.pts is not None else index
                seconds = float(pts * tb)
                if self.start is not None and seconds < self.start:
                    continue
                if (self.end is not None and seconds >= self.end) or (self.limit is not None and index >= self.limit):
                    return
                yield Frame(upright_rgb(frame), index, pts, tb, time.monotonic())
                index += 1
                last_seconds = seconds
        if not stop.is_set() and self.start is None and self.end is None and self.limit is None:
            self._check_complete(index, last_seconds)

    def _check_complete(self, decoded: int, last_seconds: float | None) -> None:
        """Compare what was decoded with what the container declares (frame count, duration)."""
        if self.truncated:
            return
        declared = self.stream.frames
        duration = float(self.container.duration / av.time_base) if self.container.duration else None
        interval = 1 / float(self.info.rate) if self.info.rate else 0.1
        if declared and decoded < declared:
            self.truncated = f"the stream declares {declared} frames but only {decoded} could be decoded"
        elif duration and (last_seconds is None or last_seconds + 2.5 * interval < duration):
            shown = 0.0 if last_seconds is None else last_seconds
            self.truncated = f"decoding ended at {shown:.2f} s of {duration:.2f} s"

    @property
    def damage(self) -> str | None:
        """What was wrong with the input, once it has been read; None for a clean input."""
        parts = [self.truncated] if self.truncated else []
        if self.corrupt_packets:
            parts.append(f"{self.corrupt_packets} corrupt packets were skipped")
        return "; ".join(parts) or None

    def close(self) -> None:
        self.container.close()
