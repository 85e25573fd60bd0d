"""Where the focal length comes from: the user, the file's EXIF, the video's metadata, or a guess.

Metric3D's metres scale with the focal length in pixels, so a wrong focal gives wrong metres. The
order, first found wins: `--fx/--fy` or `--hfov` ("given") > the image's EXIF ("exif") > the video's
container metadata ("metadata") > an assumed field of view ("assumed", with a warning in `note`).

35 mm equivalent focal lengths (EXIF FocalLengthIn35mmFilm, QuickTime
`com.apple.quicktime.camera.focal_length.35mm_equivalent`) are turned into pixels with the
diagonal convention of CIPA DC-008 (Exif 2.3) that phone and camera makers follow: the image's
diagonal is matched to the 43.27 mm diagonal of a 36 x 24 mm frame, so
`fx = fy = f35 * hypot(W, H) / 43.267`. For a 3:2 image this is exactly `f35 * max(W, H) / 36`;
for 4:3 and 16:9 images it is 4% and 2% larger than that long-side rule, and it is what matches
published phone sensors (e.g. 4.2 mm lens = 26 mm equivalent on a 5.6 x 4.2 mm sensor).

A photo's focal is one number, fx = fy: camera pixels are square. It is found for the frame the
camera wrote (EXIF PixelX/YDimension) and scaled to the file by one scale, whose rule for files that
were cropped, resized or turned after the camera is in `_camera_frame`. FocalLength in mm with nothing
else to convert it takes the sensor width of a known camera from OpenSfM's table (streamer/sensors.py).

This module imports no torch: sources and the CLI use it before any model exists.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from streamer.errors import ConfigError, SourceError
from streamer.sensors import sensor_width_mm

log = logging.getLogger(__name__)

FocalSource = Literal["given", "exif", "metadata", "assumed"]

ASSUMED_HFOV_DEG = 70.0  # webcams (Logitech C920: 70.4 deg) and phone main cameras (26 mm: ~69 deg)
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # 43.267 mm

# EXIF tags (Exif 2.32 / CIPA DC-008); Pillow reads them from IFD0 and the Exif sub-IFD.
EXIF_IFD = 0x8769
TAG_ORIENTATION = 0x0112
TAG_FOCAL_LENGTH = 0x920A  # mm, rational
TAG_FOCAL_LENGTH_35MM = 0xA405  # mm, short; 0 means unknown
TAG_FOCAL_PLANE_X_RES = 0xA20E  # pixels per unit on the sensor, x
TAG_FOCAL_PLANE_Y_RES = 0xA20F
TAG_FOCAL_PLANE_UNIT = 0xA210  # 2 inch (default), 3 cm; 4 mm and 5 um are TIFF/EP values seen in the wild
TAG_PIXEL_X_DIMENSION = 0xA002  # the image width the focal plane resolution refers to
TAG_PIXEL_Y_DIMENSION = 0xA003
TAG_MAKE = 0x010F  # IFD0 strings: the camera, for the sensor-size table
TAG_MODEL = 0x0110
ASPECT_TOLERANCE = 0.01  # |log| of the aspect ratio of the EXIF size to the file's: beyond it they disagree
FOCAL_PLANE_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height

# Container / stream metadata keys (as FFmpeg and PyAV expose them) holding a 35 mm equivalent.
# Apple devices write the QuickTime `mdta` key (AVMetadataQuickTimeMetadataKeyCameraFocalLength35mmEquivalent);
# FFmpeg with `-movflags use_metadata_tags` keeps such keys when remuxing, sometimes without the prefix.
VIDEO_F35_KEYS = (
    "com.apple.quicktime.camera.focal_length.35mm_equivalent",
    "camera.focal_length.35mm_equivalent",
)


@dataclass(frozen=True)
class Focal:
    """Focal lengths in pixels of the frame they were resolved for, and where they came from."""

    fx: float
    fy: float
    source: FocalSource
    note: str = ""

    def as_meta(self) -> dict[str, Any]:
        """The keys sinks copy into their sidecars, so metres can be traced back to their focal."""
        meta: dict[str, Any] = {"fx": self.fx, "fy": self.fy, "focal_source": self.source}
        if self.note:
            meta["focal_note"] = self.note
        return meta


def fx_from_35mm(f35: float, width: int, height: int) -> float:
    """Pixels from a 35 mm equivalent focal length, matching diagonals (see the module docstring)."""
    return f35 * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM


def fx_from_hfov(hfov_deg: float, span: int) -> float:
    """Pixels from a field of view spanning `span` pixels (pinhole: f = (span / 2) / tan(fov / 2))."""
    return (span / 2) / math.tan(math.radians(hfov_deg) / 2)


def _number(value: Any) -> float | None:
    """EXIF rationals, ints, strings like '26' or '26.000000' -> a positive finite float, else None."""
    try:
        number = float(value[0] / value[1]) if isinstance(value, tuple) else float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _exif_tags(image: Any) -> tuple[dict[int, Any], int]:
    """All EXIF tags of a Pillow image, Exif sub-IFD over IFD0, and its orientation (1 when absent)."""
    exif = image.getexif()
    tags = {int(k): v for k, v in exif.items()}
    try:
        tags.update({int(k): v for k, v in exif.get_ifd(EXIF_IFD).items()})
    except (KeyError, ValueError, TypeError, OSError):
        log.debug("unreadable Exif sub-IFD", exc_info=True)
    orientation = tags.get(TAG_ORIENTATION, 1)
    return tags, orientation if isinstance(orientation, int) else 1


def _camera_frame(tags: dict[int, Any], stored: tuple[int, int]) -> tuple[tuple[float, float], float, str]:
    """The frame the camera wrote (PixelX/YDimension) in the file's stored orientation, the one scale
    from it to the file's pixels, and a note when the tags do not simply describe the file.

    Pixels are square, so one scale serves both axes. When the tags' aspect differs from the file's,
    a crop and a resize cannot be told apart; the rule is that the file is a crop spanning the camera
    frame's full width or full height (what aspect-ratio crops such as 4:3 -> 16:9 or 1:1 give), then
    resized: scale = max(W / ref_W, H / ref_H). That is exact for a crop along one axis, for a resize,
    and for both together; only a crop of both axes (a free-hand crop) gets a focal that is too short.
    Tags left unrotated by an editor that turned the pixels (4000x3000 on a 3000x4000 file) are read
    swapped when that makes the aspects agree.
    """
    w, h = stored
    ref_w, ref_h = _number(tags.get(TAG_PIXEL_X_DIMENSION)), _number(tags.get(TAG_PIXEL_Y_DIMENSION))
    if ref_w is None and ref_h is None:
        return (float(w), float(h)), 1.0, ""
    ref_w = ref_w or ref_h * w / h  # one tag alone: the file's aspect
    ref_h = ref_h or ref_w * h / w
    notes = []
    if _aspect_differs((ref_w, ref_h), stored) and not _aspect_differs((ref_h, ref_w), stored):
        notes.append(f"EXIF size {ref_w:g}x{ref_h:g} is of the picture turned by 90 deg: read as {ref_h:g}x{ref_w:g}")
        ref_w, ref_h = ref_h, ref_w
    sx, sy = w / ref_w, h / ref_h
    scale = max(sx, sy)
    if _aspect_differs((ref_w, ref_h), stored):
        side = "width" if sx >= sy else "height"
        notes.append(
            f"EXIF size {ref_w:g}x{ref_h:g} has another aspect than the file's {w}x{h}: assumed a crop spanning "
            f"the camera frame's full {side}, scaled by {scale:.4g} (a crop of both sides would make the focal longer)"
        )
    return (ref_w, ref_h), scale, "; ".join(notes)


def _aspect_differs(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """More than 1% apart: rounding a resized side to whole pixels stays well within it."""
    return abs(math.log((a[0] / a[1]) / (b[0] / b[1]))) > ASPECT_TOLERANCE


def _camera_focal(tags: dict[int, Any], frame: tuple[float, float]) -> tuple[float, str] | None:
    """The focal length in pixels of the camera's frame, and what it came from, or None.

    FocalLengthIn35mmFilm (diagonal convention, module docstring) > FocalLength with the focal plane
    resolution > FocalLength with the camera's sensor width from a kept table (streamer/sensors.py).
    """
    f35 = _number(tags.get(TAG_FOCAL_LENGTH_35MM))
    if f35 is not None:
        return fx_from_35mm(f35, *frame), f"EXIF FocalLengthIn35mmFilm {f35:g} mm"
    focal_mm = _number(tags.get(TAG_FOCAL_LENGTH))
    if focal_mm is None:
        return None
    x_res = _number(tags.get(TAG_FOCAL_PLANE_X_RES))
    unit_mm = FOCAL_PLANE_UNIT_MM.get(tags.get(TAG_FOCAL_PLANE_UNIT, 2))
    if x_res is not None and unit_mm is not None:  # X only: pixels are square, Y repeats it or is noise
        return focal_mm * x_res / unit_mm, f"EXIF FocalLength {focal_mm:g} mm"
    make, model = (str(tags.get(t) or "").strip("\x00 ") for t in (TAG_MAKE, TAG_MODEL))
    sensor = sensor_width_mm(make, model)
    if sensor is None:
        return None
    width_mm, key = sensor
    note = f"EXIF FocalLength {focal_mm:g} mm on a {width_mm:g} mm wide sensor ({key}, sensor table)"
    return focal_mm / width_mm * max(frame), note


def focal_from_exif(path_or_bytes: str | Path | bytes, width: int, height: int) -> Focal | None:
    """The focal length in pixels of the upright image `width` x `height` from its EXIF, or None.

    Found for the camera's frame (`_camera_focal`), scaled to the file's pixels by one scale
    (`_camera_frame`: square pixels), then to `width` x `height`, which may differ from the file's
    size (a resized output). The note says where it came from and any assumption made on the way.
    """
    from PIL import Image, UnidentifiedImageError

    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes | bytearray) else path_or_bytes
    try:
        with Image.open(source) as image:
            tags, orientation = _exif_tags(image)
            stored = image.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        log.debug("no EXIF read from %s", "bytes" if isinstance(source, io.BytesIO) else source, exc_info=True)
        return None
    frame, scale, frame_note = _camera_frame(tags, stored)
    found = _camera_focal(tags, frame)
    if found is None:
        return None
    focal, note = found
    upright = stored[::-1] if orientation in TRANSPOSING_ORIENTATIONS else stored
    f = focal * scale * max(width / upright[0], height / upright[1])
    return Focal(f, f, "exif", "; ".join(n for n in (note, frame_note) if n))


def video_metadata(container: Any) -> dict[str, str]:
    """Container metadata merged with the first video stream's (stream keys win), from a PyAV container."""
    merged = dict(getattr(container, "metadata", {}) or {})
    videos = getattr(getattr(container, "streams", None), "video", ())
    if videos:
        merged.update(videos[0].metadata or {})
    return merged


def focal_from_video_metadata(metadata: Mapping[str, Any], width: int, height: int) -> Focal | None:
    """A 35 mm equivalent from container/stream metadata (VIDEO_F35_KEYS) -> pixels, or None.

    Keys are matched case-insensitively. The value is the lens' equivalent focal: a stabilised or
    cropped video frame has a longer effective focal than this, so metres come out somewhat short.
    """
    lowered = {str(k).lower(): v for k, v in metadata.items()}
    for key in VIDEO_F35_KEYS:
        f35 = _number(lowered.get(key))
        if f35 is not None:
            fx = fx_from_35mm(f35, width, height)
            return Focal(fx, fx, "metadata", f"video metadata {key} = {f35:g} mm")
    return None


def assumed_focal(width: int, height: int, hfov_deg: float = ASSUMED_HFOV_DEG) -> Focal:
    """The fallback: `hfov_deg` across the long side, so portrait phone videos are not mis-scaled."""
    f = fx_from_hfov(hfov_deg, max(width, height))
    note = (
        f"focal length unknown: assumed a {hfov_deg:g} deg field of view across the long side (fx = fy = {f:.0f} px), "
        "so metres are approximate; pass --fx/--fy (pixels) or --hfov (degrees) for true scale"
    )
    return Focal(f, f, "assumed", note)


def given_focal(fx: float | None, fy: float | None, hfov: float | None, width: int) -> Focal | None:
    """The user's values: `hfov` (horizontal, across `width`) wins over fx/fy, as in ModelConfig.focal_for."""
    if hfov is not None:
        if not 0 < hfov < 180:
            raise ConfigError(f"--hfov {hfov} is not a field of view", hint="give degrees between 0 and 180")
        f = fx_from_hfov(hfov, width)
        return Focal(f, f, "given", f"--hfov {hfov:g} deg")
    if fx is None and fy is None:
        return None
    for name, value in (("--fx", fx), ("--fy", fy)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} {value} is not a focal length", hint="give pixels, a positive number")
    fx = fx if fx is not None else fy
    fy = fy if fy is not None else fx
    return Focal(float(fx), float(fy), "given")


def resolve_focal(
    given_fx: float | None,
    given_fy: float | None,
    given_hfov: float | None,
    width: int,
    height: int,
    exif_focal: Focal | None = None,
    metadata_focal: Focal | None = None,
) -> Focal:
    """The focal length to use for a `width` x `height` frame: given > EXIF > video metadata > assumed.

    A missing fx or fy among the given values takes the other's value (square pixels).
    """
    chosen = given_focal(given_fx, given_fy, given_hfov, width) or exif_focal or metadata_focal
    if chosen is None:
        chosen = assumed_focal(width, height)
        log.warning("%s", chosen.note)
    else:
        log.info("focal length fx=%.1f fy=%.1f px (%s%s)", chosen.fx, chosen.fy, chosen.source, _detail(chosen))
    return chosen


def _detail(focal: Focal) -> str:
    return f": {focal.note}" if focal.note else ""


class FocalResolver:
    """The focal length of each frame in the order above, remembered per frame size and source hint.

    `fx`/`fy`/`hfov` are the user's values ("given"; `note` says where they came from when not the
    user, e.g. the ComfyUI mode's fixed 1000 px). A frame's `hint` is what its source knows (EXIF of
    that image, the video's metadata), in pixels of that frame. The stage calls this per batch and
    the CLI once for its source line, so results are cached and the assumed-focal warning goes out
    once: to `warn` when given (the CLI prints it), else to the log. The engine's lanes call it from
    two threads at once: a lock keeps the cache and the one warning whole.
    """

    MAX_KNOWN = 1024  # distinct (size, hint) pairs kept; a folder of photos from many cameras stays small

    def __init__(
        self,
        fx: float | None = None,
        fy: float | None = None,
        hfov: float | None = None,
        note: str = "",
        warn: Callable[[str], None] | None = None,
    ) -> None:
        given_focal(fx, fy, hfov, 1)  # bad values fail here, before the model thread sees a frame
        self.fx, self.fy, self.hfov, self.note = fx, fy, hfov, note
        self.warn = warn
        self.warned = False
        self._known: dict[tuple[int, int, Focal | None], Focal] = {}
        self._lock = threading.Lock()

    def __call__(self, width: int, height: int, hint: Focal | None = None) -> Focal:
        key = (width, height, hint)
        with self._lock:
            focal = self._known.get(key)
            if focal is None:
                if len(self._known) >= self.MAX_KNOWN:
                    self._known.clear()
                focal = self._known[key] = self._resolve(width, height, hint)
            return focal

    def _resolve(self, width: int, height: int, hint: Focal | None) -> Focal:
        given = given_focal(self.fx, self.fy, self.hfov, width)
        if given is not None and self.note:
            given = replace(given, note="; ".join(n for n in (given.note, self.note) if n))
        focal = given or hint or assumed_focal(width, height)
        log.debug(
            "focal for %dx%d: fx=%.1f fy=%.1f px (%s%s)",
            width,
            height,
            focal.fx,
            focal.fy,
            focal.source,
            _detail(focal),
        )
        if focal.source == "assumed" and not self.warned:
            self.warned = True
            if self.warn is not None:
                self.warn(focal.note)
            else:
                log.warning("%s", focal.note)
        return focal


def intrinsics_at(
    focal: Focal, src_hw: tuple[int, int], out_hw: tuple[int, int] | None = None
) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels of an output `out_hw` resized from a source `src_hw` (default: same size).

    A resize scales each focal length by its axis' size ratio. The principal point is the image centre
    with pixel centres at integers, ((W - 1) / 2, (H - 1) / 2), the convention of sinks/ply.py; a
    half-pixel-centred resize (align_corners=False) keeps the centre there.
    """
    out_h, out_w = out_hw or src_hw
    sx, sy = out_w / src_hw[1], out_h / src_hw[0]
    return focal.fx * sx, focal.fy * sy, (out_w - 1) / 2, (out_h - 1) / 2


def exif_upright(image_path: str | Path) -> np.ndarray:
    """An image file as upright RGB uint8 (H, W, 3), EXIF orientation applied.

    Phones store portrait photos as landscape pixels plus an orientation tag; ignoring it feeds the
    model a sideways scene. 16-bit images keep their top 8 bits, alpha (or a palette's transparency)
    is dropped.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(image_path) as image:
            upright = ImageOps.exif_transpose(image)
            if upright.mode.startswith("I"):  # 16-bit gray ("I;16*", or "I" from older Pillow)
                gray = np.asarray(upright, dtype=np.int64)
                gray = gray >> 8 if upright.mode != "I" or gray.max(initial=0) > 255 else gray
                return np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
            if upright.mode in ("P", "PA") and "transparency" in upright.info:
                upright = upright.convert("RGBA")  # Pillow's own advice: P -> RGB with transparency warns
            return np.asarray(upright.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise SourceError(f"{image_path} is not a readable image", hint="use PNG, JPEG, BMP, TIFF or WebP") from exc
