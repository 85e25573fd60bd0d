"""Ordinary video files made with Debian's `ffmpeg` CLI, and an `ffprobe` reader to judge them.

The files are the kinds people actually feed `streamer transcode` (issue 11): audio longer or
shorter than the video, stream-copy trims with edit lists, MPEG-TS starting late, phone rotation,
variable frame rate, 10-bit HEVC, VP9/Opus, MJPEG/PCM, 5.1 and two audio tracks, odd sizes and
60 fps with B-frames. They are made by the FFmpeg CLI, not PyAV, so that neither the writer nor the
reader shares code with the library's decoder (PyAV bundles its own FFmpeg).

Every kind is a function with parameters, so `HELD_OUT` can check the same kinds with values the
library was not tuned on. Clips are tiny (~1 s, ~96x64, 10-60 fps) to keep CPU transcodes quick.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from pathlib import Path

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
FFPROBE = shutil.which("ffprobe") or "/usr/bin/ffprobe"

Size = tuple[int, int]
Maker = Callable[[Path], Path]


def ffmpeg_available() -> str | None:
    """None when the ffmpeg and ffprobe CLIs run here, otherwise what is missing."""
    for tool in (FFMPEG, FFPROBE):
        if not Path(tool).exists():
            return f"{Path(tool).name} not found (apt-get install ffmpeg)"
        try:
            subprocess.run([tool, "-version"], capture_output=True, check=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{tool} does not run: {exc}"
    return None


def ffmpeg(*args: str | Path) -> None:
    """Run the ffmpeg CLI quietly; a failure raises with ffmpeg's own message."""
    cmd = [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr}")


# -- lavfi inputs -------------------------------------------------------------------------------


def video_in(size: Size, rate: float, duration: float) -> list[str]:
    """A moving test pattern: every frame differs, so dropped or repeated frames would show.

    testsrc2 rounds odd sizes down to even ones, so odd sizes are cropped from the next even size.
    """
    w, h = size
    source = f"testsrc2=size={w + w % 2}x{h + h % 2}:rate={rate}:duration={duration}"
    if w % 2 or h % 2:
        source += f",format=rgb24,crop={w}:{h}:0:0"
    return ["-f", "lavfi", "-i", source]


def audio_in(duration: float, sample_rate: int = 48000, frequency: int = 440) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate={sample_rate}:duration={duration}"]


H264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]


def plain_clip(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 10,
    duration: float = 1.5,
    audio: bool = True,
) -> Path:
    """The most ordinary file: H.264 + AAC in .mp4, both streams starting at 0 and equally long."""
    out = directory / "plain.mp4"
    ffmpeg(*video_in(size, rate, duration), *(audio_in(duration) if audio else []), *H264, "-c:a", "aac", out)
    return out


# -- the kinds ----------------------------------------------------------------------------------


def audio_length(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 10,
    duration: float = 1.2,
    audio_delta: float = 0.5,
    container: str = "mp4",
) -> Path:
    """H.264 + AAC where the audio runs `audio_delta` seconds longer (or, negative, shorter)."""
    out = directory / f"audio_length.{container}"
    ffmpeg(*video_in(size, rate, duration), *audio_in(duration + audio_delta), *H264, "-c:a", "aac", out)
    return out


def edit_list(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 10,
    duration: float = 2.0,
    gop: int = 6,
    cut: float = 0.85,
) -> Path:
    """An .mp4 trimmed by stream copy (`ffmpeg -ss CUT -i IN -c copy`).

    The copy starts at the keyframe before CUT, and the muxer writes an edit list so that players
    skip the frames before CUT: the file holds more frames than it shows.
    """
    full = directory / "edit_list_full.mp4"
    out = directory / "edit_list.mp4"
    ffmpeg(
        *video_in(size, rate, duration),
        *audio_in(duration),
        *H264,
        "-g",
        gop,
        "-keyint_min",
        gop,
        "-bf",
        2,
        "-c:a",
        "aac",
        full,
    )
    ffmpeg("-ss", cut, "-i", full, "-c", "copy", out)
    return out


def late_mpegts(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 10,
    duration: float = 1.2,
    offset: float = 6.4,
    audio_codec: str = "aac",
) -> Path:
    """MPEG-TS whose timestamps start late (as cut from a broadcast): `-output_ts_offset`."""
    out = directory / "late.ts"
    ffmpeg(
        *video_in(size, rate, duration),
        *audio_in(duration),
        *H264,
        "-c:a",
        audio_codec,
        "-output_ts_offset",
        offset,
        out,
    )
    return out


def rotated(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 10,
    duration: float = 1.2,
    rotate: int = 90,
) -> Path:
    """A phone-style video: landscape-coded pictures with a display matrix saying how to turn them.

    Set by remuxing: FFmpeg 5.1 honours the `rotate` tag only when stream copying; FFmpeg 6+ has
    `-display_rotation` instead. Either way ffprobe then reports `rotation` = `rotate`.
    """
    plain = directory / "rotated_plain.mp4"
    out = directory / "rotated.mp4"
    ffmpeg(*video_in(size, rate, duration), *audio_in(duration), *H264, "-c:a", "aac", plain)
    ffmpeg("-i", plain, "-c", "copy", "-metadata:s:v:0", f"rotate={rotate}", out)
    if probe(out, ("video",)).video.rotation % 360 != rotate % 360:
        ffmpeg("-display_rotation:v:0", rotate, "-i", plain, "-c", "copy", out)
    got = probe(out, ("video",)).video.rotation
    if got % 360 != rotate % 360:
        raise RuntimeError(f"could not give {out} a {rotate}° display matrix (ffprobe says {got})")
    return out


def variable_rate(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 30,
    duration: float = 0.8,
    keep: str = "lt(mod(n,5),3)",
    container: str = "mp4",
) -> Path:
    """Variable frame rate: frames of a `rate` fps pattern dropped by `keep` (a select expression)."""
    out = directory / f"vfr.{container}"
    ffmpeg(
        *video_in(size, rate, duration),
        *audio_in(duration),
        "-vf",
        f"select='{keep}'",
        "-fps_mode",
        "vfr",
        *H264,
        "-c:a",
        "aac",
        out,
    )
    return out


def hevc10(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 10,
    duration: float = 1.2,
    container: str = "mp4",
) -> Path:
    """10-bit HEVC (libx265, yuv420p10le), as modern phones and cameras record."""
    out = directory / f"hevc10.{container}"
    tag = ["-tag:v", "hvc1"] if container in ("mp4", "mov") else []
    ffmpeg(
        *video_in(size, rate, duration),
        *audio_in(duration),
        "-c:v",
        "libx265",
        "-pix_fmt",
        "yuv420p10le",
        "-x265-params",
        "log-level=error",
        *tag,
        "-c:a",
        "aac",
        out,
    )
    return out


def vp9_opus(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 10,
    duration: float = 1.2,
    channels: int = 2,
) -> Path:
    """VP9 + Opus in WebM (browser recordings, YouTube downloads)."""
    out = directory / "vp9.webm"
    ffmpeg(
        *video_in(size, rate, duration),
        *audio_in(duration),
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        8,
        "-b:v",
        "200k",
        "-c:a",
        "libopus",
        "-ac",
        channels,
        out,
    )
    return out


def mjpeg_pcm(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 10,
    duration: float = 1.2,
    sample_rate: int = 16000,
) -> Path:
    """MJPEG + PCM in AVI (cameras, webcams, old digital still cameras)."""
    out = directory / "mjpeg.avi"
    ffmpeg(
        *video_in(size, rate, duration),
        *audio_in(duration, sample_rate),
        "-c:v",
        "mjpeg",
        "-pix_fmt",
        "yuvj420p",
        "-q:v",
        3,
        "-c:a",
        "pcm_s16le",
        out,
    )
    return out


def surround(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 10,
    duration: float = 1.2,
    audio_codec: str = "aac",
    container: str = "mp4",
) -> Path:
    """5.1 audio (films, camcorders)."""
    out = directory / f"surround.{container}"
    ffmpeg(
        *video_in(size, rate, duration),
        *audio_in(duration),
        *H264,
        "-c:a",
        audio_codec,
        "-ac",
        6,
        "-channel_layout",
        "5.1",
        out,
    )
    return out


def two_audio_tracks(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 10,
    duration: float = 1.2,
    second_duration: float = 0.6,
    container: str = "mp4",
    second_codec: str = "aac",
) -> Path:
    """Two audio tracks (languages, commentary); the second is of another length, so mixing them up shows."""
    out = directory / f"two_audio.{container}"
    ffmpeg(
        *video_in(size, rate, duration),
        *audio_in(duration, 48000, 440),
        *audio_in(second_duration, 48000, 660),
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-map",
        "2:a",
        *H264,
        "-c:a:0",
        "aac",
        "-c:a:1",
        second_codec,
        out,
    )
    return out


def odd_size(
    directory: Path,
    size: Size = (97, 55),
    rate: float = 10,
    duration: float = 1.2,
    codec: str = "libx264",
) -> Path:
    """Odd width and height: H.264 needs 4:4:4 for them, VP9 codes 4:2:0 with odd sizes."""
    if codec == "libx264":
        out = directory / "odd.mp4"
        video = ["-c:v", "libx264", "-pix_fmt", "yuv444p"]
        audio = ["-c:a", "aac"]
    else:
        out = directory / "odd.webm"
        video = ["-c:v", codec, "-pix_fmt", "yuv420p", "-deadline", "realtime", "-cpu-used", "8"]
        audio = ["-c:a", "libopus"]
    ffmpeg(*video_in(size, rate, duration), *audio_in(duration), *video, *audio, out)
    return out


def high_rate_bframes(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 60,
    duration: float = 0.4,
    bframes: int = 3,
    container: str = "mp4",
) -> Path:
    """60 fps with B-frames: decode order differs from presentation order, pts != dts."""
    out = directory / f"hfr.{container}"
    ffmpeg(
        *video_in(size, rate, duration),
        *audio_in(duration),
        *H264,
        "-bf",
        bframes,
        "-b_strategy",
        0,
        "-c:a",
        "aac",
        out,
    )
    return out


CORPUS: list[tuple[str, Maker]] = [
    ("audio-longer", partial(audio_length, audio_delta=0.5)),
    ("audio-shorter", partial(audio_length, audio_delta=-0.5)),
    ("edit-list", partial(edit_list)),
    ("late-mpegts", partial(late_mpegts)),
    ("rotation-90", partial(rotated, rotate=90)),
    ("vfr", partial(variable_rate)),
    ("hevc-10bit", partial(hevc10)),
    ("vp9-opus", partial(vp9_opus)),
    ("mjpeg-pcm-avi", partial(mjpeg_pcm)),
    ("surround-5.1", partial(surround)),
    ("two-audio-tracks", partial(two_audio_tracks)),
    ("odd-size", partial(odd_size)),
    ("60fps-bframes", partial(high_rate_bframes)),
]

# The same kinds with other values: sizes, rates, offsets, durations, containers and codecs the
# library's fixes were not written against.
HELD_OUT: list[tuple[str, Maker]] = [
    ("audio-longer", partial(audio_length, size=(80, 48), rate=15, duration=0.8, audio_delta=0.3, container="mov")),
    ("audio-shorter", partial(audio_length, size=(112, 64), rate=12, duration=1.1, audio_delta=-0.4)),
    ("edit-list", partial(edit_list, size=(64, 96), rate=12, duration=1.5, gop=5, cut=0.6)),
    ("late-mpegts", partial(late_mpegts, size=(80, 60), rate=12.5, duration=1.0, offset=11.0, audio_codec="mp2")),
    ("rotation-270", partial(rotated, size=(112, 64), rate=12, duration=1.0, rotate=270)),
    ("vfr", partial(variable_rate, size=(80, 48), rate=24, duration=0.75, keep="not(eq(mod(n,3),1))", container="mkv")),
    ("hevc-10bit", partial(hevc10, size=(112, 64), rate=12, duration=1.0, container="mkv")),
    ("vp9-opus", partial(vp9_opus, size=(80, 64), rate=15, duration=0.8, channels=1)),
    ("mjpeg-pcm-avi", partial(mjpeg_pcm, size=(80, 60), rate=12, duration=1.0, sample_rate=44100)),
    ("surround-5.1", partial(surround, size=(80, 48), rate=12, duration=1.0, audio_codec="ac3", container="mkv")),
    (
        "two-audio-tracks",
        partial(
            two_audio_tracks,
            size=(80, 48),
            rate=12,
            duration=1.0,
            second_duration=1.8,
            container="mkv",
            second_codec="libopus",
        ),
    ),
    ("odd-size", partial(odd_size, size=(75, 43), rate=12, duration=1.0, codec="libvpx-vp9")),
    ("50fps-bframes", partial(high_rate_bframes, size=(80, 48), rate=50, duration=0.5, bframes=2, container="mkv")),
]


# -- the reader ---------------------------------------------------------------------------------


@dataclass
class StreamProbe:
    """One stream as ffprobe presents it: timings come from decoded frames, which honour edit
    lists and skip-samples (packets a player discards are not counted), like a player."""

    index: int
    kind: str
    codec: str
    start: float | None  # seconds of the first presented frame
    end: float | None  # last presented frame + its duration
    times: list[float]  # presented frame timestamps, relative to the first
    packets: int = 0
    discarded_packets: int = 0  # flagged D: before an edit list's start, decoded but not shown
    packet_start: float | None = None  # first pts of a packet that is not discarded
    width: int | None = None
    height: int | None = None
    rotation: int = 0  # ffprobe's display-matrix rotation (counter-clockwise degrees), 0 without one
    side_data: list[str] = field(default_factory=list)
    channels: int | None = None
    sample_rate: int | None = None
    color_range: str | None = None
    color_space: str | None = None
    color_primaries: str | None = None
    color_transfer: str | None = None
    pix_fmt: str | None = None
    declared_frames: int | None = None  # the container's nb_frames, which counts discarded frames too

    @property
    def frames(self) -> int:
        return len(self.times)

    @property
    def duration(self) -> float:
        return (self.end or 0.0) - (self.start or 0.0)

    @property
    def interval(self) -> float:
        """The smallest gap between presented frames (the frame interval; for VFR its shortest)."""
        gaps = [b - a for a, b in pairwise(self.times) if b - a > 1e-6]
        return min(gaps) if gaps else 0.0

    @property
    def display_size(self) -> tuple[int, int] | None:
        """Width and height as shown: swapped for a quarter-turn display matrix."""
        if self.width is None or self.height is None:
            return None
        if self.rotation % 180 == 90:
            return self.height, self.width
        return self.width, self.height


@dataclass
class Probe:
    path: Path
    format_name: str
    format_start: float | None
    format_duration: float | None
    streams: list[StreamProbe]

    @property
    def video(self) -> StreamProbe:
        return next(s for s in self.streams if s.kind == "video")

    @property
    def audio(self) -> list[StreamProbe]:
        return [s for s in self.streams if s.kind == "audio"]

    def av_offset(self) -> float | None:
        """Audio start minus video start (first audio track), as presented; None without audio."""
        if not self.audio or self.audio[0].start is None or self.video.start is None:
            return None
        return self.audio[0].start - self.video.start


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _frame_duration(frame: dict, sample_rate: int | None) -> float | None:
    """ffprobe 5.x says pkt_duration_time, 6+ duration_time; audio falls back to samples/rate."""
    for key in ("duration_time", "pkt_duration_time"):
        value = _float(frame.get(key))
        if value is not None:
            return value
    if frame.get("nb_samples") and sample_rate:
        return int(frame["nb_samples"]) / sample_rate
    return None


def probe(path: Path | str, streams: Sequence[str] = ("video", "audio")) -> Probe:
    """Read a file with ffprobe (an independent reader: Debian's FFmpeg, not PyAV's)."""
    cmd = [
        FFPROBE,
        "-v",
        "error",
        "-show_streams",
        "-show_format",
        "-show_packets",
        "-show_frames",
        "-of",
        "json",
        str(path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"ffprobe failed on {path}: {done.stderr}")
    data = json.loads(done.stdout)
    entries = data.get("packets_and_frames", [])
    result: list[StreamProbe] = []
    for s in data.get("streams", []):
        kind = s.get("codec_type")
        if kind not in streams:
            continue
        idx = s["index"]
        sample_rate = int(s["sample_rate"]) if s.get("sample_rate") else None
        frames = [e for e in entries if e.get("type") == "frame" and e.get("stream_index") == idx]
        packets = [e for e in entries if e.get("type") == "packet" and e.get("stream_index") == idx]
        stamps = [_float(f.get("best_effort_timestamp_time", f.get("pts_time"))) for f in frames]
        stamps = [t for t in stamps if t is not None]
        start = stamps[0] if stamps else None
        end = None
        if stamps:
            last = _frame_duration(frames[-1], sample_rate)
            if last is None and len(stamps) > 1:
                last = statistics.median(b - a for a, b in pairwise(stamps))
            end = stamps[-1] + (last or 0.0)
        kept = [_float(p.get("pts_time")) for p in packets if "D" not in p.get("flags", "")]
        kept = [t for t in kept if t is not None]
        rotation = 0
        side: list[str] = []
        for sd in s.get("side_data_list", []):
            side.append(sd.get("side_data_type", "?"))
            if "rotation" in sd:
                rotation = int(round(float(sd["rotation"])))
        result.append(
            StreamProbe(
                index=idx,
                kind=kind,
                codec=s.get("codec_name", "?"),
                start=start,
                end=end,
                times=[t - stamps[0] for t in stamps],
                packets=len(packets),
                discarded_packets=sum("D" in p.get("flags", "") for p in packets),
                packet_start=min(kept) if kept else None,
                width=s.get("width"),
                height=s.get("height"),
                rotation=rotation,
                side_data=side,
                channels=s.get("channels"),
                sample_rate=sample_rate,
                color_range=s.get("color_range"),
                color_space=s.get("color_space"),
                color_primaries=s.get("color_primaries"),
                color_transfer=s.get("color_transfer"),
                pix_fmt=s.get("pix_fmt"),
                declared_frames=int(s["nb_frames"]) if str(s.get("nb_frames", "")).isdigit() else None,
            )
        )
    fmt = data.get("format", {})
    return Probe(
        Path(path),
        fmt.get("format_name", "?"),
        _float(fmt.get("start_time")),
        _float(fmt.get("duration")),
        result,
    )


def presented_frame_count(path: Path | str) -> int:
    """Video frames `ffmpeg -i IN -f null -` outputs without changing the rate: a second reader
    (ffmpeg's own decode loop, which applies edit lists as players do) to cross-check ffprobe."""
    cmd = [
        FFMPEG,
        "-hide_banner",
        "-nostdin",
        "-v",
        "error",
        "-i",
        str(path),
        "-map",
        "0:v:0",
        "-fps_mode",
        "passthrough",
        "-f",
        "framecrc",
        "-",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg could not decode {path}: {done.stderr}")
    return sum(1 for line in done.stdout.splitlines() if line and not line.startswith("#"))
