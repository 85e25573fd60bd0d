"""Video files and network streams through PyAV: container timestamps, variable frame rate and
rotation kept, `start`/`end` in seconds, truncated inputs decoded as far as they go, and the
audio packets of the same demuxer passed along with the frames. A focal length written in the
container's metadata (phones do) rides on every frame as its focal hint. Frame times that files
get wrong (missing, in decode order, repeated) are repaired in timestamps.py, so they always
increase; frames FFmpeg decodes with concealed errors are kept like any other."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamer.errors import SourceError
from streamer.focal import Focal, focal_from_video_metadata, video_metadata
from streamer.sources.base import Source
from streamer.sources.timestamps import REORDER_WINDOW, FrameClock, Rejoin
from streamer.types import Frame, StreamInfo

log = logging.getLogger(__name__)
NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://", "srt://")
NETWORK_TIMEOUT_S = 10.0


def quiet_ffmpeg_logs() -> None:
    """FFmpeg's log lines to FFmpeg's own C logger, fatal ones only. PyAV's Python log callback takes
    the GIL inside FFmpeg's decoder threads: on a damaged file they log while the main thread,
    holding the GIL, waits for them, and the run hangs for good (seen on fuzzed .mp4s, PyAV 17 and
    18). Nothing here reads FFmpeg's logs: our errors say what went wrong themselves."""
    av.logging.restore_default_callback()
    av.logging.set_libav_level(av.logging.PANIC)


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


def main_video(container: av.container.InputContainer) -> av.VideoStream:
    """The video stream a player shows, chosen as the ffmpeg CLI does (FFmpeg's best stream): not
    a cover picture or one-frame thumbnail track that some files list first."""
    return container.streams.best("video") or container.streams.video[0]


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
        threads: int = 0,
    ) -> None:
        self.uri = uri
        quiet_ffmpeg_logs()
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
        self.stream = main_video(self.container)
        if self.stream.codec_context is None or not self.stream.codec_context.width:
            self.container.close()
            raise SourceError(
                f"{uri}: the video stream cannot be decoded (unknown codec or damaged header)",
                hint="check the file plays in ffplay or VLC; re-encode it if it does",
            )
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = threads
        self.audio_streams = tuple(self.container.streams.audio)
        self.start, self.end, self.limit = start, end, frames
        self.truncated: str | None = None
        self.rejoin: Rejoin | None = None  # made per read: timestamp jumps seen so far
        self.corrupt_packets = 0
        self._cut = False  # a trim's end was reached: only audio up to it is still read
        self.last_seconds: float | None = None  # the last frame's time
        self.decoded_until: float | None = None  # the last decoded frame's time, kept by the trim or not
        self.audio_end: float | None = None  # where the last audio packet read ends
        rate = self.stream.average_rate or self.stream.guessed_rate
        ctx = self.stream.codec_context
        rotation = 0 if network else self._probe_rotation()
        # `start`/`end` count from the timeline's start, as players show it (an MPEG-TS recording
        # may start at 1.4 s or 11 h): the times frames are compared with are shifted by it
        self.cut_from = None if start is None else self.origin + start
        self.cut_to = None if end is None else self.origin + end
        width, height = (ctx.height, ctx.width) if rotation in (90, 270) else (ctx.width, ctx.height)
        self._focal: tuple[tuple[int, int], Focal | None] | None = None
        self.info = StreamInfo(
            width,
            height,
            self.stream.time_base or Fraction(1, 90000),
            Fraction(rate) if rate else None,
            network if live is None else live,
            self.stream.frames or None,
            Path(uri).name if not network else uri,
            self.audio_streams,
            None if start else self._timeline_start(),
            self.focal_hint(width, height),
        )

    def focal_hint(self, width: int, height: int) -> Focal | None:
        """The metadata's focal length in pixels of a `width` x `height` upright frame; recomputed on a new size."""
        if self._focal is None or self._focal[0] != (width, height):
            metadata = video_metadata(self.container)
            self._focal = ((width, height), focal_from_video_metadata(metadata, width, height))
        return self._focal[1]

    def _timeline_start(self) -> Fraction | None:
        """The container's start: the earliest presented time of any stream (audio priming excluded)."""
        if self.container.start_time is None:
            return None
        return Fraction(self.container.start_time, av.time_base)

    def _probe_rotation(self) -> int:
        """Rotation of a file's first frame, to report the upright size before decoding starts.

        Reading then starts over from a fresh demuxer, not a seek to 0: a seek lands on a
        keyframe, and a file cut mid-GOP (or a damaged one) holds audio and frames before it."""
        rotation = 0
        try:
            for frame in self.container.decode(self.stream):
                rotation = clockwise_rotation(frame)
                break
        except av.FFmpegError:
            pass
        threads = self.stream.codec_context.thread_count
        self.container.close()
        self.container = av.open(self.uri, metadata_errors="replace")
        self.stream = main_video(self.container)
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = threads
        self.audio_streams = tuple(self.container.streams.audio)
        return rotation

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        """Decode in order; a corrupt packet is skipped and counted, a broken container ends the stream.

        Audio packets from the same demuxer ride on the frame shown before they start; the last frame is held back
        until the input ends so the audio after it rides along too. Trims cut audio alike.
        """
        tb = self.stream.time_base
        self.rejoin = Rejoin(self.container)
        # where timestamps may jump (MPEG-TS/PS) a time is only known by reading up to it, and their
        # seeks land on no keyframe: such files are read from the start and frames before it dropped
        if self.start and not self.rejoin.active:
            try:
                self.container.seek(int(self.cut_from / tb), stream=self.stream, backward=True)
            except av.FFmpegError as exc:
                raise SourceError(
                    f"cannot seek to {self.start} s in {self.uri}: {exc.strerror or exc}",
                    hint="drop --start, or remux the file first",
                ) from exc
        held: Frame | None = None
        audio: list = []
        index = 0
        self._cut = False
        for frame, pts in self._timed_frames(stop, audio):
            seconds = self.decoded_until = float(pts * tb)
            if self._cut or (self.cut_from is not None and seconds < self.cut_from):
                continue
            if (self.cut_to is not None and seconds >= self.cut_to) or (self.limit is not None and index >= self.limit):
                self._cut = True  # past the trim: only the audio up to its end is still wanted
                if not self.audio_streams:
                    break
                continue
            if held is not None:
                held.audio = self._audio_before(audio, seconds)
                yield held
            image = upright_rgb(frame)
            held = Frame(image, index, pts, tb, time.monotonic(), focal=self.focal_hint(image.shape[1], image.shape[0]))
            index += 1
            self.last_seconds = seconds
        if held is not None:
            held.audio = [p for p in audio if not self._after_end(p)]
            yield held
        if not stop.is_set() and not self._cut:
            self._check_complete()

    def _timed_frames(self, stop: threading.Event, audio: list) -> Iterator[tuple[av.VideoFrame, int]]:
        """Decoded frames in presentation order with strictly increasing times (see timestamps.py);
        the audio packets read on the way are collected in `audio`. Frames FFmpeg decodes with
        concealed errors are kept; a packet it cannot decode at all is skipped and counted."""
        clock = FrameClock(
            self._frame_ticks(), self.stream.start_time or 0, window=0 if self.info.live else REORDER_WINDOW
        )
        packets = self.container.demux(self.stream, *self.audio_streams)
        decoded = 0
        while not stop.is_set():
            try:
                packet = next(packets, None)
            except av.FFmpegError as exc:
                self.truncated = f"reading stopped after {decoded} frames: {exc.strerror or exc}"
                break
            if packet is None:
                break
            self.rejoin.fix(packet)
            if packet.stream.type == "audio":
                self._note_audio(packet, audio)
                if self._cut and self._after_end(packet):
                    return
                continue
            if self._cut:
                continue
            try:
                frames = packet.decode()
            except av.FFmpegError:
                self.corrupt_packets += 1
                continue
            for frame in frames:
                decoded += 1
                yield from clock.push(frame, frame.pts, frame.dts, frame.duration)
        if not stop.is_set():
            yield from clock.drain()
        if self.rejoin.jumps:
            log.info("%s: the timestamps jump %d times: joined where they jump", self.uri, self.rejoin.jumps)
        if clock.repaired:
            log.info(
                "%s: %d frames had no time or one not after the previous frame's: timed one frame on",
                self.uri,
                clock.repaired,
            )

    @staticmethod
    def _audio_before(audio: list, seconds: float) -> list:
        """Take the packets read so far that start before `seconds` (the next frame's time) out of
        `audio`: frames wait in the reordering window while the demuxer reads ahead, and audio
        past a `--max-frames` cut must stay behind until the cut is known."""
        taken = [p for p in audio if float(p.pts * p.time_base) < seconds]
        audio[:] = [p for p in audio if float(p.pts * p.time_base) >= seconds]
        return taken

    def _trim_end(self) -> float | None:
        """Where kept audio ends: `end`, or after the last frame when the frame count cut the input."""
        if self.cut_to is not None:
            return self.cut_to
        if self.limit is not None and self.last_seconds is not None:
            return self.last_seconds + self.frame_interval
        return None

    def _after_end(self, packet) -> bool:
        end = self._trim_end()
        return end is not None and packet.pts is not None and float(packet.pts * packet.time_base) >= end

    def _note_audio(self, packet, audio: list) -> None:
        if packet.pts is None or packet.size == 0:
            return
        start = float(packet.pts * packet.time_base)
        end = start + float((packet.duration or 0) * packet.time_base)
        self.audio_end = max(self.audio_end or end, end)
        if self.cut_from is not None and end <= self.cut_from:
            return
        if not self._after_end(packet):
            audio.append(packet)

    def _frame_ticks(self) -> int:
        """One frame in stream ticks, for frames whose time must be made up."""
        if not self.info.rate:
            return 1
        return max(1, round(1 / (self.info.rate * self.stream.time_base)))

    @property
    def frame_interval(self) -> float:
        return 1 / float(self.info.rate) if self.info.rate else 0.1

    def _check_complete(self) -> None:
        """Judge damage on the video alone: decoding must reach the video stream's own end.

        Audio may run on past the video (phone clips) and edit lists hide frames the stream
        counts, so neither the container's duration nor the packet count says "damaged". Where
        the stream declares no duration (Matroska), the file must reach the container's end
        with some stream: a cut file ends early for all of them. Frames before a `start` count
        as decoded: a start in the lost part of a cut file is told as the damage. Where the
        timestamps jump, FFmpeg's length is the distance between the first and last ones, which
        says nothing: reaching the end of the file without a read error is all there is to judge.
        """
        if self.truncated or self.rejoin.jumps:
            return
        slack = 2.5 * self.frame_interval
        video_end = (self.decoded_until + self.frame_interval) if self.decoded_until is not None else None
        declared = self._declared_video_end()
        if declared is not None:
            if video_end is None or video_end + slack < declared:
                shown = 0.0 if video_end is None else video_end - self.origin
                self.truncated = f"the video ends at {shown:.2f} s of {declared - self.origin:.2f} s"
            return
        container_end = self._container_end()
        reached = max(v for v in (video_end, self.audio_end, self.origin) if v is not None)
        if container_end is not None and reached + slack < container_end:
            self.truncated = f"decoding ended at {reached - self.origin:.2f} s of {container_end - self.origin:.2f} s"

    def _declared_video_end(self) -> float | None:
        if not self.stream.duration:
            return None
        start = self.stream.start_time or 0
        return float((start + self.stream.duration) * self.stream.time_base)

    def _container_end(self) -> float | None:
        if not self.container.duration:
            return None
        return float((self.container.start_time or 0) + self.container.duration) / av.time_base

    @property
    def origin(self) -> float:
        """Where the input's timeline starts (MPEG-TS recordings often start seconds in)."""
        if self.container.start_time is not None:
            return self.container.start_time / av.time_base
        return 0.0

    @property
    def duration(self) -> float | None:
        """Seconds from the timeline's start to the video's end, as the file declares (None: it does not)."""
        end = self._declared_video_end() or self._container_end()
        return None if end is None else end - self.origin

    @property
    def damage(self) -> str | None:
        """What was wrong with the input, once it has been read; None for a clean input."""
        parts = [self.truncated] if self.truncated else []
        if self.corrupt_packets:
            parts.append(f"{self.corrupt_packets} corrupt packets were skipped")
        return "; ".join(parts) or None

    def close(self) -> None:
        self.container.close()
