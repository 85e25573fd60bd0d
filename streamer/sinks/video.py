"""Depth video files through PyAV: a timeline from 0, audio copied beside, full-range tagged colour.

The file is written as `NAME.partial.EXT` and renamed to `NAME.EXT` when the input was fully
processed. After an error or an interrupt the encoder is still flushed and the container closed,
so the partial file plays and holds every frame written, and its name says it is partial.

Time: the output starts at 0; video and audio are shifted by the same offset (the input's start,
or the first frame's time after a trim), so their relative offset is the input's. Audio packets arrive with the frames, from the
source's own demuxer, and are copied (or re-encoded where the container cannot hold them).
Colour: pictures arrive as full-range BT.709 YUV planes made on the device, and every stream
says so (range, matrix, primaries, transfer), so the 256 depth levels survive and players agree.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from fractions import Fraction
from pathlib import Path

import av

from streamer.errors import SinkError
from streamer.sinks.base import (
    METRIC16_MAX_M,
    METRIC16_SCALE,
    ScaleLog,
    Sink,
    check_output,
    format_needs,
    format_picture,
    partial_path,
    sidecar,
    write_json,
)
from streamer.sinks.encoders import COLOR_TAGS, METRIC16_TAGS, audio_rate, ffv1_slices, pick_encoder, quality_options
from streamer.types import Result, StreamInfo
from streamer.views import PictureSettings

log = logging.getLogger(__name__)
ALPHA_CODECS = ("libvpx-vp9",)  # encoders that keep an alpha channel (yuva420p), in WebM
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}
# Audio codecs each container takes as they are; others are re-encoded to the first one listed.
# (.mkv is not listed: it takes whatever its muxer supports.)
AUDIO_COPY = {
    ".mp4": ("aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"),
    ".mov": ("aac", "mp3", "ac3", "alac", "pcm_s16le", "pcm_s24le", "pcm_f32le"),
    ".webm": ("opus", "vorbis"),
    ".avi": ("mp3", "ac3", "pcm_s16le"),
}
# for containers that take any codec their muxer supports (Matroska), what the others become
AUDIO_FALLBACK = ("aac",)
FFV1_OPTIONS = {"level": "3", "slicecrc": "1", "g": "1"}
WRITE_HINT = "check free disk space and that the output directory is writable"
# errors that are the disk's (or the folder's) doing; anything else FFmpeg says is not
DISK_ERRORS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EFBIG}
DISK_ERRORS |= {errno.EDQUOT} if hasattr(errno, "EDQUOT") else set()  # quotas: not on Windows
# Matroska stores blocks relative to clusters, so a block may start before 0: AAC's priming packet
# keeps its place before the video's 0 instead of the muxer shifting every stream to make it 0
NEGATIVE_TS_OK = {".mkv": {"avoid_negative_ts": "disabled"}}


def write_error(action: str, exc: Exception) -> SinkError:
    """The disk is blamed only for the disk's errors; FFmpeg refusing data is said as that."""
    if getattr(exc, "errno", None) in DISK_ERRORS:
        return SinkError(f"{action} failed: {exc}", hint=WRITE_HINT)
    return SinkError(
        f"{action} failed: FFmpeg refused the data: {exc}",
        hint="not a disk problem; please report it with the input file (`streamer doctor` shows the FFmpeg build)",
    )


class VideoSink(Sink):
    def __init__(
        self,
        path: str | Path,
        fmt: str,
        picture: PictureSettings | None = None,
        codec: str | None = None,
        crf: int = 18,
        overwrite: bool = False,
        copy_audio: bool = True,
        inputs: list[str | Path] = (),
        threads: int = 0,
        sidecar_extra: dict | None = None,
    ) -> None:
        self.path = Path(path)
        self.sidecar_extra = sidecar_extra or {}  # more sidecar fields from the caller (batch: what made it)
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
        self.codec = "ffv1" if fmt == "metric16" else pick_encoder(self.suffix, codec)
        self.needs = format_needs(fmt)
        self.picture = format_picture(fmt, picture)
        if self.picture is not None and self.codec != "ffv1":
            self.picture.pixel_format = "yuv420p"  # made on the device; 4:4:4 where a side is odd
        if self.picture is not None and fmt == "keyed" and self.codec in ALPHA_CODECS:
            # VP9 in WebM keeps the keyed view's transparency (yuva420p): RGBA comes off the device
            self.picture.pixel_format, self.picture.alpha = "rgb24", True
        self.crf = crf
        self.copy_audio = copy_audio
        self.threads = threads
        self.name = f"video:{self.path.name}"
        self.work_path = partial_path(self.path)
        self.frames_written = 0
        self.meta: dict = {}
        self.scales = ScaleLog()  # the header holds the first frame's scale; the JSON sidecar lists changes
        self.stats = None
        self.audio_note: str | None = None
        self.container = None
        self._stream = None
        self._audio: dict[int, tuple] = {}  # input stream index -> (output stream, re-encoded?)
        self._audio_dts: dict[int, int] = {}  # output stream index -> its last copied packet's dts
        self.audio_overlaps = 0  # copied audio packets left out: they went back in time
        self._origin: Fraction | None = None  # the first frame's time: the output's 0
        # one frame waits for the next, so its duration is the real gap to it (VFR), not 1/rate
        self._pending: av.VideoFrame | None = None
        self._last_gap = 0

    # -- setup -----------------------------------------------------------------------------

    def open(self, info: StreamInfo, stats) -> None:
        self.info = info
        self.stats = stats  # the scene cuts for the sidecar, read at close
        try:
            self.container = av.open(str(self.work_path), "w", container_options=NEGATIVE_TS_OK.get(self.suffix))
        except (av.FFmpegError, OSError) as exc:
            raise SinkError(f"cannot create {self.work_path}: {exc}", hint=WRITE_HINT) from exc

    def _open_video_stream(self, width: int, height: int, pix_fmt: str) -> None:
        stream = self.container.add_stream(self.codec, rate=self.info.rate or Fraction(30))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = self.info.time_base
        ctx = stream.codec_context
        ctx.time_base = self.info.time_base
        for key, value in (METRIC16_TAGS if self.fmt == "metric16" else COLOR_TAGS).items():
            setattr(ctx, key, value)
        if self.codec == "ffv1":
            options = {**FFV1_OPTIONS, "slices": str(ffv1_slices(width, height))}
        else:
            options = quality_options(self.codec, self.crf)
        # packets last as long as their frames (the gap to the next), not 1/rate: VFR stays exact
        options["flags"] = options.get("flags", "") + "+frame_duration"
        stream.options = options
        ctx.thread_type = "AUTO"
        ctx.thread_count = self.threads
        # the sidecar's units, scale, fx/fy, model and stabiliser also travel inside the file (the
        # scene cuts only in the sidecar: the header is written before they are known)
        self.container.metadata["comment"] = json.dumps(sidecar(self.meta, self.encoding()))
        self._open_encoder(stream, f"{width}x{height} {pix_fmt}, options {stream.options}")
        self._stream = stream

    def _open_encoder(self, stream, settings: str) -> None:
        """Open the encoder now, so a refusal names it and its settings (not the disk)."""
        try:
            stream.codec_context.open()
        except (av.FFmpegError, ValueError) as exc:
            name = stream.codec_context.name
            raise SinkError(
                f"the {name} encoder refused its settings ({settings}): {exc}",
                hint="pick another encoder with --codec or another output format",
            ) from exc

    def _open_audio(self, src) -> None:
        # the codec's own name: the decoder's may differ (mp3float decodes mp3)
        name = src.codec_context.codec.canonical_name
        allowed = AUDIO_COPY.get(self.suffix)
        if name in (self.container.supported_codecs if allowed is None else allowed):
            self._audio[src.index] = (self.container.add_stream_from_template(src), False)
            return
        allowed = allowed or AUDIO_FALLBACK
        codec = av.Codec(allowed[0], "w")
        rate = audio_rate(codec, src.rate)  # Opus only runs at 48 kHz and its divisors: PyAV resamples
        out = self.container.add_stream(allowed[0], rate=rate)
        # a named layout: encoders refuse an unordered one such as "1 channels"
        out.layout = {1: "mono", 2: "stereo"}.get(src.layout.nb_channels, src.layout)
        out.format = codec.audio_formats[0]  # e.g. fltp for aac; PyAV converts
        self._open_encoder(out, f"{rate} Hz {out.layout.name} {out.format.name}")
        self._audio[src.index] = (out, True)
        self.audio_note = f"audio re-encoded {name} -> {allowed[0]} ({self.suffix} cannot hold it)"
        log.warning(self.audio_note)

    # -- writing ---------------------------------------------------------------------------

    def video_frame(self, result: Result) -> av.VideoFrame:
        if self.fmt == "metric16":
            return av.VideoFrame.from_ndarray(result.maps["depth_mm"], format="gray16le")
        if self.fmt.startswith("comfy"):
            return av.VideoFrame.from_ndarray(result.maps[self.fmt.replace("-", "_")], format="rgb24")
        picture = result.maps["picture"]
        if picture.ndim == 3 and picture.shape[2] in (3, 4):
            return av.VideoFrame.from_ndarray(picture, format="rgb24" if picture.shape[2] == 3 else "rgba")
        frame = av.VideoFrame.from_ndarray(picture, format="yuv420p" if picture.ndim == 2 else "yuv444p")
        frame.color_range, frame.colorspace = COLOR_TAGS["color_range"], COLOR_TAGS["colorspace"]
        return frame

    def write(self, result: Result) -> None:
        frame = self.video_frame(result)
        source = result.frame
        self.scales.note(result)
        if self._stream is None:
            self.meta = result.meta
            pix_fmt = {"rgb24": "bgr0" if self.codec == "ffv1" else "yuv420p", "rgba": "yuva420p"}.get(
                frame.format.name, frame.format.name
            )
            self._open_video_stream(frame.width, frame.height, pix_fmt)
            if self.copy_audio:  # after the video: players and tools expect the video as stream 0
                for src in self.info.audio:
                    self._open_audio(src)
            self._origin = Fraction(source.pts) * source.time_base
            if self.info.start is not None:  # audio that starts before the first frame keeps its lead
                self._origin = min(self._origin, self.info.start)
        frame.pts = source.pts - round(self._origin / source.time_base)
        frame.time_base = source.time_base
        self._check_order(frame, source.index)
        try:
            self._encode_pending(frame.pts - self._pending.pts if self._pending is not None else 0)
            self._pending = frame
            self._mux_audio(source.audio)
        except (av.FFmpegError, OSError) as exc:
            raise write_error(f"writing {self.work_path}", exc) from exc

    def _check_order(self, frame: av.VideoFrame, index: int) -> None:
        """Times must increase: a source that breaks this is a timestamp problem, said as one."""
        if self._pending is not None and frame.pts <= self._pending.pts:
            tb = frame.time_base
            raise SinkError(
                f"frame {index} is timed at {float(frame.pts * tb):.3f} s, not after the previous frame "
                f"({float(self._pending.pts * tb):.3f} s): video timestamps must increase",
                hint="the source gave out-of-order timestamps; please report it with the input",
            )

    def _encode_pending(self, gap: int) -> None:
        """Encode the waiting frame, lasting `gap` ticks (the last one lasts as long as the gap before it)."""
        if self._pending is None:
            return
        self._last_gap = gap or self._last_gap
        self._pending.duration = self._last_gap
        for packet in self._stream.encode(self._pending):
            self.container.mux(packet)
        self._pending = None
        self.frames_written += 1

    def _mux_audio(self, packets: list) -> None:
        """Audio from the input, on the output's timeline; packets that end before 0 are left out
        (one that reaches 0, like AAC's priming packet, keeps its negative start as the input had it)."""
        for packet in packets:
            target = self._audio.get(packet.stream.index)
            if target is None or packet.size == 0 or packet.pts is None:
                continue
            out, reencode = target
            shift = round(self._origin / packet.time_base)
            if packet.pts - shift + (packet.duration or 0) < 0:
                continue
            if not reencode:
                packet.pts -= shift
                packet.dts = packet.dts - shift if packet.dts is not None else packet.pts
                if self._audio_overlaps(packet, out):
                    continue
                packet.stream = out
                self.container.mux(packet)
                continue
            for frame in packet.decode():
                frame.pts = None  # the encoder counts samples from 0, like the video
                for encoded in out.encode(frame):
                    self.container.mux(encoded)

    def _audio_overlaps(self, packet, out) -> bool:
        """Whether `packet` starts at or before the previous packet of its track, in the output's
        ticks (where two recordings were joined, or a remux broke): the muxer refuses such a
        packet, so it is left out, as the overlap would play the same moment twice."""
        tick = Fraction(packet.dts) * packet.time_base / (out.time_base or packet.time_base)
        last = self._audio_dts.get(out.index)
        if last is not None and tick // 1 <= last:
            self.audio_overlaps += 1
            return True
        self._audio_dts[out.index] = tick // 1
        return False

    # -- finalising ------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._stream is not None:
            self._encode_pending(0)
            for packet in self._stream.encode(None):
                self.container.mux(packet)
        for out, reencode in self._audio.values():
            if reencode:
                for packet in out.encode(None):
                    self.container.mux(packet)

    def close(self, complete: bool) -> None:
        if self.container is None:
            return
        error: Exception | None = None
        try:
            self._flush()
        except (av.FFmpegError, OSError) as exc:
            error = exc
        finally:
            try:
                self.container.close()
            except (av.FFmpegError, OSError) as exc:
                error = error or exc
            self.container = None
        final = complete and error is None and self.frames_written > 0
        target = self.path if final else self.work_path
        if final:
            os.replace(self.work_path, self.path)
            self.work_path.with_suffix(".json").unlink(missing_ok=True)  # an earlier, interrupted run's
        elif self.frames_written == 0:  # nothing to keep (the muxer may not even have made the file)
            self.work_path.unlink(missing_ok=True)
            target = None
        if target is not None:
            write_json(target.with_suffix(".json"), self.describe(final))
        self.final_path = target
        if error is not None and complete:  # after a failed write, that first error is the one reported
            raise write_error(f"finishing {self.work_path}", error) from error

    def encoding(self) -> dict:
        """How pixel values relate to depth, and how the colours are tagged."""
        info: dict = {"format": self.fmt, "codec": self.codec, "time_base": str(self.info.time_base)}
        if self.fmt == "metric16":
            info.update(
                units="millimetres", scale_to_metres=METRIC16_SCALE, max_metres=METRIC16_MAX_M, pixel_format="gray16le"
            )
        else:
            info.update(units="display (not metric)", colour="full range (0..255), BT.709")
            if self.picture is not None:
                info["display_range"] = self.picture.range
        return info

    def describe(self, complete: bool) -> dict:
        extra = {**self.encoding(), "frames": self.frames_written, "complete": complete, "source": self.info.name}
        if self.audio_note:
            extra["audio"] = self.audio_note
        if self.audio_overlaps:
            extra["audio_overlaps_dropped"] = self.audio_overlaps
        return sidecar(self.meta, {**extra, **self.sidecar_extra, **self.scales.extra()}, self.stats)


__all__ = ["VIDEO_SUFFIXES", "VideoSink"]
