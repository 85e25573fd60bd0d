"""Which video encoder to use, and the colour tags every written video carries.

`--codec auto` (the default for .mp4/.mov) takes NVIDIA's NVENC when it opens on this machine:
most users' GeForce/RTX cards have it, and it takes 1080p encoding off the CPU; H100-class
cards and machines without a driver fail to open it, and libx264 is used.
"""

from __future__ import annotations

import functools
import logging
from fractions import Fraction

import av

from streamer.errors import SinkError

log = logging.getLogger(__name__)
DEFAULT_CODEC = {".mp4": "auto", ".mov": "auto", ".mkv": "ffv1", ".webm": "libvpx-vp9", ".avi": "ffv1"}
AUTO_CHAIN = ("h264_nvenc", "libx264")
# full range BT.709 with the sRGB transfer: what the device renders (streamer/processors/render.py)
COLOR_TAGS = {"color_range": 2, "colorspace": 1, "color_primaries": 1, "color_trc": 13}
# uint16 millimetres: full range, linear values
METRIC16_TAGS = {"color_range": 2, "colorspace": 1, "color_primaries": 1, "color_trc": 8}


@functools.cache
def encoder_opens(name: str) -> bool:
    """Whether `name` is in this FFmpeg build and opens here (a hardware encoder needs its device)."""
    if name not in av.codecs_available:
        return False
    try:
        ctx = av.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 144, "yuv420p"
        ctx.time_base = Fraction(1, 30)
        ctx.open()
    except (av.FFmpegError, ValueError, OSError) as exc:
        log.debug("encoder %s does not open here: %s", name, exc)
        return False
    return True


def pick_encoder(suffix: str, requested: str | None) -> str:
    """The encoder for a container: the requested one, or its default (auto = NVENC, else libx264)."""
    name = requested or DEFAULT_CODEC[suffix]
    if name == "auto":
        name = next(codec for codec in AUTO_CHAIN if codec == AUTO_CHAIN[-1] or encoder_opens(codec))
        log.debug("video encoder: %s", name)
    elif name not in av.codecs_available:
        raise SinkError(
            f"encoder {name} is not in this FFmpeg build", hint="pick another with --codec (see `streamer doctor`)"
        )
    return name


# FFV1's slice counts, most first: more slices encode on more cores, but each needs a few pixels
FFV1_SLICES = (24, 16, 12, 9, 6, 4, 2, 1)


def ffv1_slices(width: int, height: int) -> int:
    """The most FFV1 slices a `width` x `height` picture takes.

    FFV1 cuts a picture into a grid of v rows by h columns with v <= h < 2v, each at least a
    pixel; a 2x2 picture takes 4 slices and a 1x1 one a single slice, where 24 fails to open.
    """
    for slices in FFV1_SLICES:
        for rows in range(1, slices + 1):
            columns, rest = divmod(slices, rows)
            if not rest and rows <= columns < 2 * rows and columns <= width and rows <= height:
                return slices
    return 1


def audio_rate(codec: av.Codec, rate: int) -> int:
    """`rate` where the encoder takes it, else the lowest rate it takes above it (else its highest):
    Opus runs at 48 kHz and its divisors only, so 44.1 kHz audio becomes 48 kHz."""
    rates = codec.audio_rates
    if not rates or rate in rates:
        return rate
    above = [r for r in rates if r >= rate]
    return min(above) if above else max(rates)


def quality_options(codec: str, crf: int) -> dict[str, str]:
    """`--crf` (x264's scale: 0 lossless .. 51 worst, 18 visually lossless) as the encoder's own
    constant-quality control, so no encoder falls back to its default bitrate (libvpx's
    256 kb/s, NVENC's 2 Mb/s) and a detailed picture gets the bits its quality needs."""
    if codec in ("libx264", "libx265"):
        options = {"crf": str(crf), "preset": "veryfast"}
        return {**options, "x265-params": "log-level=error"} if codec == "libx265" else options
    if codec.endswith("_nvenc"):  # constant quality: VBR with a target quality and no bitrate cap
        return {"rc": "vbr", "cq": str(max(1, crf)), "b": "0", "maxrate": "0", "preset": "p4"}
    if codec in ("libvpx-vp9", "libvpx", "libaom-av1"):  # constant quality needs bitrate 0
        options = {"crf": str(round(crf * 63 / 51)), "b": "0"}
        return {**options, "row-mt": "1"} if codec != "libvpx" else {**options, "qmin": "0"}
    if codec == "libsvtav1":
        return {"crf": str(round(crf * 63 / 51))}
    if codec in ("mpeg4", "mjpeg", "mpeg2video", "mpeg1video"):  # a fixed quantiser, 2 (best) .. 31
        q = str(2 + crf * 29 // 51)  # pinned at both ends: rate control cannot steer away from it
        return {"qmin": q, "qmax": q}
    if codec == "ffv1":
        return {}  # lossless: there is no quality to set
    log.warning("--crf has no mapping for the %s encoder: its own defaults are used", codec)
    return {}
