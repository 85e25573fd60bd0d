"""Image sequences: 8-bit PNG pictures, 16-bit PNG millimetres, float32 EXR metres, or NPZ arrays.

Each file is written under a temporary name and renamed when complete; `metadata.json` beside
them says how to read the values back. With `image_sidecars` (the `depth` command) each image also
gets NAME.json with its own focal length, so photos from several cameras, and later calls into the
same folder, each keep theirs. The NPZ sidecar lists the arrays as they are in the files.
"""

from __future__ import annotations

import cv2

import io
import os
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamer.errors import SinkError
from streamer.sinks.base import (
    METRIC16_MAX_M,
    METRIC16_SCALE,
    ImageFocals,
    ScaleLog,
    Sink,
    format_needs,
    format_picture,
    prepare_directory,
    sidecar,
    write_json,
)
from streamer.types import Result, StreamInfo
from streamer.views import PictureSettings

SEQUENCE_SUFFIX = {"metric16": ".png", "exr": ".exr", "npz": ".npz"}


def encode_exr(depth: np.ndarray) -> bytes:
    """float32 metres -> a single-channel (Y) float EXR, lossless ZIP, through FFmpeg's encoder."""
    ctx = av.CodecContext.create("exr", "w")
    ctx.width, ctx.height = depth.shape[1], depth.shape[0]
    ctx.pix_fmt = "grayf32le"
    ctx.time_base = Fraction(1, 1)
    ctx.options = {"compression": "zip1", "format": "float"}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(depth, dtype=np.float32), format="grayf32le")
    return b"".join(bytes(p) for p in ctx.encode(frame) + ctx.encode(None))


def decode_exr(data: bytes) -> np.ndarray:
    ctx = av.CodecContext.create("exr", "r")
    return ctx.decode(av.Packet(data))[0].to_ndarray(format="grayf32le")


# what each array of an NPZ holds, for metadata.json (listed as they are in the files)
NPZ_ARRAYS = {"depth": "depth (m)", "normal": "normal (HxWx3 unit)"}


def npz_arrays(result: Result) -> dict[str, np.ndarray]:
    """Every map as float32, with the frame's own fx, fy and their source (a folder of photos may mix cameras)."""
    arrays = {k: v.astype(np.float32) if v.dtype != np.uint8 else v for k, v in result.maps.items()}
    arrays |= {"fx": np.float32(result.meta.get("fx", 0)), "fy": np.float32(result.meta.get("fy", 0))}
    if "focal_source" in result.meta:
        arrays["focal_source"] = np.str_(result.meta["focal_source"])  # a plain string array: no pickle to load
    return arrays


def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def encode_png(picture: np.ndarray) -> bytes:
    if picture.ndim == 3:
        picture = cv2.cvtColor(picture, cv2.COLOR_RGBA2BGRA if picture.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", picture)
    if not ok:
        raise SinkError("PNG encoding failed")
    return data.tobytes()


class ImageSequenceSink(Sink):
    """One file per frame in `directory`, named after the source image or `frame_NNNNNN`."""

    def __init__(
        self,
        directory: str | Path,
        fmt: str,
        picture: PictureSettings | None = None,
        overwrite: bool = False,
        name_suffix: str = "",
        write_metadata: bool = True,
        sidecar_extra: dict | None = None,
        image_sidecars: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.image_sidecars = image_sidecars  # NAME.json beside each image: its own focal (`depth`)
        self.sidecar_extra = sidecar_extra or {}  # more sidecar fields from the caller (batch: what made it)
        self.fmt = fmt
        self.needs = format_needs(fmt)
        self.picture = format_picture(fmt, picture)
        if self.picture is not None:
            self.picture.alpha = True  # PNG carries it: the keyed view's transparent background stays clear
        self.overwrite = overwrite
        self.suffix = SEQUENCE_SUFFIX.get(fmt, ".png")
        self.name_suffix = name_suffix
        self.write_metadata = write_metadata
        self.name = f"images:{self.directory.name or '.'}{name_suffix}{self.suffix}"
        self.frames_written = 0
        # numbered frames this run wrote (a video's): other numbered frames in the folder are an earlier run's
        self.numbered: set[str] = set()
        self.meta: dict = {}
        self.focals = ImageFocals()
        self.scales = ScaleLog()
        self.stats = None
        self.arrays: list[str] = []  # the NPZ's array names, as written

    def open(self, info: StreamInfo, stats) -> None:
        self.info = info
        self.stats = stats  # the scene cuts for metadata.json, read at close
        prepare_directory(self.directory)

    def path_for(self, result: Result) -> Path:
        stem = result.frame.name or f"frame_{result.frame.index:06d}"
        return self.directory / f"{stem}{self.name_suffix}{self.suffix}"

    def remove_stale_frames(self) -> None:
        """A replaced sequence keeps no frame of the earlier run: a shorter rerun of a video must not
        leave the old frames past its end. Only a run that numbers its frames removes any, and only
        numbered frames of this format; named ones (photos, even one called frame_000001.jpg) may
        be other runs' results and stay."""
        numbered = re.compile(rf"frame_\d{{6,}}{re.escape(self.name_suffix + self.suffix)}")
        for path in self.directory.iterdir():
            if numbered.fullmatch(path.name) and path.name not in self.numbered:
                path.unlink(missing_ok=True)

    def encode(self, result: Result) -> bytes:
        if self.fmt == "metric16":
            return encode_png(result.maps["depth_mm"])
        if self.fmt == "exr":
            return encode_exr(result.depth)
        if self.fmt == "npz":
            arrays = npz_arrays(result)
            self.arrays = list(arrays)
            return encode_npz(arrays)
        if self.fmt.startswith("comfy"):
            return encode_png(result.maps[self.fmt.replace("-", "_")])
        return encode_png(result.maps["picture"])

    @property
    def metadata_path(self) -> Path | None:
        """The sequence's sidecar, or None when another sink of the run writes it."""
        return self.directory / f"metadata{self.name_suffix}.json" if self.write_metadata else None

    def write(self, result: Result) -> None:
        path = self.path_for(result)
        own = path.with_suffix(".json") if self.image_sidecars else None
        for target in (path, own):
            if target is not None and target.exists() and not self.overwrite:
                raise SinkError(f"output {target} already exists", hint="pass --overwrite to replace it")
        tmp = path.with_name(f".{path.name}.partial")
        try:
            tmp.write_bytes(self.encode(result))
            os.replace(tmp, path)
            if own is not None:
                write_json(own, sidecar(result.meta, {"image": path.name, "format": self.fmt}))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SinkError(f"writing {path} failed: {exc.strerror}", hint="check free disk space") from exc
        self.frames_written += 1
        if not result.frame.name:
            self.numbered.add(path.name)
        self.meta = result.meta
        self.focals.note(result)
        self.scales.note(result)

    def close(self, complete: bool) -> None:
        if self.overwrite and self.numbered:
            self.remove_stale_frames()
        if not self.write_metadata or self.frames_written == 0:
            return
        extra: dict = {
            "format": self.fmt,
            "frames": self.frames_written,
            "complete": complete,
            "file_suffix": self.suffix,
        }
        if self.fmt == "metric16":
            extra.update(units="millimetres", scale_to_metres=METRIC16_SCALE, max_metres=METRIC16_MAX_M, dtype="uint16")
        elif self.fmt in ("exr", "npz"):
            extra.update(
                units="metres",
                dtype="float32",
                arrays=", ".join(NPZ_ARRAYS.get(name, name) for name in self.arrays)
                if self.fmt == "npz"
                else "Y = depth (m)",
            )
        else:
            extra.update(units="display (not metric)")
        extra.update(self.sidecar_extra)
        extra.update(self.focals.extra())
        extra.update(self.scales.extra())
        write_json(self.metadata_path, sidecar(self.meta, extra, self.stats))
