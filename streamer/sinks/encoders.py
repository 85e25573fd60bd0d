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
