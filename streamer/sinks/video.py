"""Depth video files through PyAV: input timestamps kept, audio copied through, finalised always.

The file is written as `NAME.partial.EXT` and renamed to `NAME.EXT` when the input was fully
processed. After an error or an interrupt the encoder is still flushed and the container closed,
so the partial file plays and holds every frame written, and its name says it is partial.
"""

from __future__ import annotations

import json
import logging
import os
from fractions import Fraction
from pathlib import Path

import av

from streamer.errors import SinkError
from streamer.processors.render import Renderer
from streamer.sinks.base import (
    METRIC16_MAX_M,
    METRIC16_SCALE,
    Sink,
    check_output,
    metric16,
    partial_path,
    render_picture,
    sidecar,
    write_json,
)
from streamer.types import Result, StreamInfo

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}
DEFAULT_CODEC = {".mp4": "libx264", ".mov": "libx264", ".mkv": "ffv1", ".webm": "libvpx-vp9", ".avi": "ffv1"}
# Audio codecs each container takes as they are; others are re-encoded to the first one listed.
AUDIO_COPY = {
    ".mp4": ("aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"),
    ".mov": ("aac", "mp3", "ac3", "alac", "pcm_s16le", "pcm_s24le", "pcm_f32le"),
    ".webm": ("opus", "vorbis"),
    ".avi": ("mp3", "ac3", "pcm_s16le"),
}
FFV1_OPTIONS = {"level": "3", "slices": "24", "slicecrc": "1", "g": "1"}


class VideoSink(Sink):
    def __init__(
        self,
        path: str | Path,
        fmt: str,
        renderer: Renderer,
        codec: str | None = None,
        crf: int = 18,
        overwrite: bool = False,
        audio_from: str | Path | None = None,
        inputs: list[str | Path] = (),
    ) -> None:
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        if self.suffix not in VIDEO_SUFFIXES:
            raise SinkError(
                f"{self.path.name}: unknown video container", hint=f"use one of {' '.join(sorted(VIDEO_SUFFIXES))}"
            )
        if fmt in ("exr", "npz"):
            raise SinkError(f"format {fmt} is written as an image sequence, not a video", hint="pass a directory as -o")
        if fmt == "metric16" and self.suffix != ".mkv":
            raise SinkError(
                "metric16 video is lossless 16-bit FFV1, which needs .mkv",
                hint=f"use -o {self.path.with_suffix('.mkv')}",
            )
        check_output(self.path, overwrite, inputs)
        self.fmt = fmt
        self.renderer = renderer
        self.codec = "ffv1" if fmt == "metric16" else codec or DEFAULT_CODEC[self.suffix]
        if self.codec not in av.codecs_available:
            raise SinkError(
                f"encoder {self.codec} is not in this FFmpeg build",
                hint="pick another with --codec (see `streamer doctor`)",
            )
        self.crf = crf
        self.audio_from = audio_from
        self.name = f"video:{self.path.name}"
        self.work_path = partial_path(self.path)
        self.frames_written = 0
        self.meta: dict = {}
        self.audio_note: str | None = None
        self.container = None
        self._stream = None
        self._audio_in = None
        self._audio = None  # (output stream, packet iterator) while input audio remains
        self._audio_pending = None
        self._reencode = None  # the output audio stream when it is encoded rather than copied

    # -- setup -----------------------------------------------------------------------------

    def open(self, info: StreamInfo, stats) -> None:
        self.info = info
        try:
            # Matroska/WebM would shift every stream so copied audio priming (negative pts) starts
            # at 0, moving the video timestamps; keep them as the input has them.
            options = {"avoid_negative_ts": "disabled"} if self.suffix in (".mkv", ".webm") else {}
            self.container = av.open(str(self.work_path), "w", options=options)
        except (av.FFmpegError, OSError) as exc:
            raise SinkError(
                f"cannot create {self.work_path}: {exc}", hint="check the directory and free space"
            ) from exc
        if self.audio_from is not None:
            self._open_audio()

    def _open_video_stream(self, width: int, height: int) -> None:
        rate = self.info.rate or Fraction(30)
        stream = self.container.add_stream(self.codec, rate=rate)
        stream.width, stream.height = width, height
        stream.time_base = self.info.time_base
        stream.codec_context.time_base = self.info.time_base
        if self.fmt == "metric16":
            stream.pix_fmt = "gray16le"
        elif self.codec == "ffv1":
            stream.pix_fmt = "bgr0"
        elif width % 2 or height % 2:
            stream.pix_fmt = "yuv444p"  # 4:2:0 needs even sizes; keep the source size instead
        else:
            stream.pix_fmt = "yuv420p"
        if self.codec == "ffv1":
            stream.options = FFV1_OPTIONS
        elif self.codec in ("libx264", "libx265"):
            stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        stream.codec_context.thread_type = "AUTO"
        stream.codec_context.thread_count = 0
        # the sidecar's units, scale, fx/fy and model also travel inside the file
        self.container.metadata["comment"] = json.dumps(sidecar(self.meta, self.encoding()))
        self._stream = stream

    def _open_audio(self) -> None:
        try:
            self._audio_in = av.open(str(self.audio_from), metadata_errors="replace")
        except av.FFmpegError:
            return
        if not self._audio_in.streams.audio:
            self._audio_in.close()
            self._audio_in = None
            return
        src = self._audio_in.streams.audio[0]
        allowed = AUDIO_COPY.get(self.suffix)
        if allowed is None or src.codec_context.name in allowed:
            out = self.container.add_stream_from_template(src)
        else:
            out = self.container.add_stream(allowed[0], rate=src.rate)
            # a named layout: encoders refuse an unordered one such as "1 channels"
            out.layout = {1: "mono", 2: "stereo"}.get(src.layout.nb_channels, src.layout)
            out.format = out.codec_context.codec.audio_formats[0]  # e.g. fltp for aac; PyAV resamples
            self._reencode = out
            self.audio_note = (
                f"audio re-encoded {src.codec_context.name} -> {allowed[0]} ({self.suffix} cannot hold it)"
            )
            log.warning(self.audio_note)
        self._audio = (out, self._audio_in.demux(src))

    # -- writing ---------------------------------------------------------------------------

    def write(self, result: Result) -> None:
        if self.fmt == "metric16":
            picture = metric16(result.depth)
            frame = av.VideoFrame.from_ndarray(picture, format="gray16le")
        else:
            picture = render_picture(self.fmt, self.renderer, result)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        if self._stream is None:
            self.meta = result.meta
            self._open_video_stream(picture.shape[1], picture.shape[0])
        frame.pts = result.frame.pts
        frame.time_base = result.frame.time_base
        try:
            self._mux_audio_until(result.frame.seconds)
            for packet in self._stream.encode(frame):
                self.container.mux(packet)
        except (av.FFmpegError, OSError) as exc:
            raise SinkError(f"writing {self.work_path} failed: {exc}", hint="check free disk space") from exc
        self.frames_written += 1

    def _mux_audio_until(self, seconds: float | None) -> None:
        """Copy (or re-encode) audio packets up to `seconds` so the file stays interleaved."""
        if self._audio is None:
            return
        out, packets = self._audio
        while True:
            packet = self._audio_pending or next(packets, None)
            self._audio_pending = None
            if packet is None:
                self._audio = None
                return
            if packet.size == 0:
                continue
            t = float(packet.pts * packet.time_base) if packet.pts is not None else None
            if seconds is not None and t is not None and t > seconds:
                self._audio_pending = packet
                return
            if self._reencode is None:
                packet.stream = out
                self.container.mux(packet)
            else:
                for frame in packet.decode():
                    frame.pts = None
                    for p in out.encode(frame):
                        self.container.mux(p)

    # -- finalising ------------------------------------------------------------------------

    def close(self, complete: bool) -> None:
        if self.container is None:
            return
        error: Exception | None = None
        try:
            if self._stream is not None:
                for packet in self._stream.encode(None):
                    self.container.mux(packet)
            if complete:
                self._mux_audio_until(None)
            if self._reencode is not None:
                for packet in self._reencode.encode(None):
                    self.container.mux(packet)
        except (av.FFmpegError, OSError) as exc:
            error = exc
        finally:
            try:
                self.container.close()
            except (av.FFmpegError, OSError) as exc:
                error = error or exc
            if self._audio_in is not None:
                self._audio_in.close()
        final = complete and error is None and self.frames_written > 0
        target = self.path if final else self.work_path
        if final:
            os.replace(self.work_path, self.path)
        elif self.frames_written == 0 and self.work_path.exists():
            self.work_path.unlink()
            target = None
        if target is not None:
            write_json(target.with_suffix(".json"), self.describe(final))
        self.final_path = target
        if error is not None and complete:  # after a failed write, that first error is the one reported
            raise SinkError(f"finishing {self.work_path} failed: {error}", hint="check free disk space") from error

    def encoding(self) -> dict:
        """How pixel values relate to depth."""
        info: dict = {"format": self.fmt, "codec": self.codec, "time_base": str(self.info.time_base)}
        if self.fmt == "metric16":
            info.update(
                units="millimetres", scale_to_metres=METRIC16_SCALE, max_metres=METRIC16_MAX_M, pixel_format="gray16le"
            )
        else:
            info.update(units="display (not metric)", display_range=self.renderer.display.mode)
        return info

    def describe(self, complete: bool) -> dict:
        extra = {**self.encoding(), "frames": self.frames_written, "complete": complete, "source": self.info.name}
        if self.audio_note:
            extra["audio"] = self.audio_note
        return sidecar(self.meta, extra)
