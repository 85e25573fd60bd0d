"""Point clouds: one binary little-endian PLY per frame, in metres, in the camera frame.

Each pixel with a depth becomes a vertex `x y z` (float32 metres, OpenCV camera frame: x right,
y down, z forward, origin at the camera centre) with the input pixel's colour `red green blue`
(uchar) and optionally the surface normal `nx ny nz` (float32, same frame). The header is the
standard one that plyfile, Open3D, Blender and MeshLab read. Files are written under a temporary
name and renamed when complete; `metadata.json` beside them says units, convention and focal source.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from streamer.errors import SinkError
from streamer.sinks.base import ImageFocals, ScaleLog, Sink, prepare_directory, sidecar, write_json
from streamer.types import Result, StreamInfo

log = logging.getLogger(__name__)

CONVENTION = "camera frame, OpenCV: x right, y down, z forward; origin at the camera centre; pixel centres at integers"
XYZ_FIELDS = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
NORMAL_FIELDS = [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
COLOUR_FIELDS = [("red", "u1"), ("green", "u1"), ("blue", "u1")]
PLY_TYPES = {"<f4": "float", "u1": "uchar"}
PLY_COMMENT = "streamer: metres, OpenCV camera frame (x right, y down, z forward)"


def valid_mask(depth: np.ndarray, confidence: np.ndarray | None = None, min_confidence: float = 0.0) -> np.ndarray:
    """Pixels worth a point: finite positive depth, and confidence >= `min_confidence` when given."""
    mask = np.isfinite(depth) & (depth > 0)
    if confidence is not None and min_confidence > 0:
        mask &= confidence >= min_confidence
    return mask


def sample(array: np.ndarray, stride: int, mask: np.ndarray | None) -> np.ndarray:
    """The values of `array` at the pixels `backproject` returns, in the same order."""
    thinned = array[::stride, ::stride]
    flat = thinned.reshape(-1, *array.shape[2:])
    if mask is None:
        return flat
    return flat.take(np.flatnonzero(mask[::stride, ::stride]), axis=0)  # 5x faster than boolean indexing


def backproject(
    depth: np.ndarray,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    stride: int = 1,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """(N, 3) float32 camera-frame points for the pixels `[::stride, ::stride]` where `mask` holds.

    Pinhole model, pixel (u, v) = (column, row) with centres at integers:
    x = (u - cx) * z / fx, y = (v - cy) * z / fy, z = depth. Row-major order; `mask=None` keeps
    every sampled pixel (invalid depths included). Pure numpy so it can move to the device later.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    z = np.asarray(depth[::stride, ::stride], dtype=np.float32)
    # One ray per column and per row, broadcast over the grid: no per-pixel index arithmetic.
    ray_x = (np.arange(0, depth.shape[1], stride, dtype=np.float32) - np.float32(cx)) / np.float32(fx)
    ray_y = (np.arange(0, depth.shape[0], stride, dtype=np.float32) - np.float32(cy)) / np.float32(fy)
    ray_x, ray_y = np.broadcast_to(ray_x[None, :], z.shape), np.broadcast_to(ray_y[:, None], z.shape)
    if mask is None:
        z, ray_x, ray_y = z.ravel(), ray_x.ravel(), ray_y.ravel()
    else:
        keep = mask[::stride, ::stride]
        z, ray_x, ray_y = z[keep], ray_x[keep], ray_y[keep]
    xyz = np.empty((z.size, 3), dtype=np.float32)
    np.multiply(ray_x, z, out=xyz[:, 0])
    np.multiply(ray_y, z, out=xyz[:, 1])
    xyz[:, 2] = z
    return xyz


def ply_header(fields: list[tuple[str, str]], count: int, comments: tuple[str, ...] = ()) -> bytes:
    """The ASCII header of a binary little-endian PLY with one `vertex` element."""
    lines = ["ply", "format binary_little_endian 1.0", *(f"comment {c}" for c in comments), f"element vertex {count}"]
    lines += [f"property {PLY_TYPES[dtype]} {name}" for name, dtype in fields]
    return ("\n".join([*lines, "end_header"]) + "\n").encode("ascii")


def write_ply(
    path: str | Path,
    xyz: np.ndarray,
    rgb: np.ndarray,
    normals: np.ndarray | None = None,
    comments: tuple[str, ...] = (),
) -> None:
    """Write vertices with colours (and normals) as a binary PLY: one structured array, one `tofile`.

    Property order is x y z [nx ny nz] red green blue, the order Open3D and MeshLab write.
    """
    fields = XYZ_FIELDS + (NORMAL_FIELDS if normals is not None else []) + COLOUR_FIELDS
    vertices = np.empty(len(xyz), dtype=np.dtype(fields))
    for first, values in (("x", xyz), ("nx", normals), ("red", rgb)):
        if values is not None and len(vertices):
            _fields_view(vertices, first)[:] = values
    with open(path, "wb") as f:
        f.write(ply_header(fields, len(vertices), comments))
        vertices.tofile(f)


def _fields_view(vertices: np.ndarray, first: str) -> np.ndarray:
    """An (N, 3) view of three consecutive same-typed fields starting at `first`: one copy fills all three."""
    dtype, offset = vertices.dtype.fields[first][:2]
    return np.ndarray((len(vertices), 3), dtype, vertices, offset, (vertices.itemsize, dtype.itemsize))


def intrinsics_of(result: Result) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) at the output size: `meta["intrinsics"]`, else fx/fy when the output has the source's size."""
    if "intrinsics" in result.meta:
        fx, fy, cx, cy = (float(v) for v in result.meta["intrinsics"])
        return fx, fy, cx, cy
    h, w = result.depth.shape[:2]
    if "fx" in result.meta and result.frame.image.shape[:2] == (h, w):
        return float(result.meta["fx"]), float(result.meta.get("fy", result.meta["fx"])), (w - 1) / 2, (h - 1) / 2
    raise SinkError(
        "the result carries no camera intrinsics at the output size", hint="this is a bug: please report it"
    )


def colours_of(result: Result) -> np.ndarray:
    """The input picture at the output size: `maps["image"]`, else the frame itself when sizes agree."""
    image = result.maps.get("image")
    if image is None and result.frame.image.shape[:2] == result.depth.shape[:2]:
        image = result.frame.image
    if image is None or image.shape[:2] != result.depth.shape[:2]:
        raise SinkError("the result has no input image at the depth map's size", hint="this is a bug: please report it")
    return image


class PlySink(Sink):
    """One `.ply` per frame in `directory`, named after the source image or `frame_NNNNNN`.

    `stride` N keeps every Nth pixel in both axes (N^2 fewer points); pixels without depth, or with
    confidence below `min_confidence`, are dropped; `normals` adds nx ny nz.
    """

    def __init__(
        self,
        directory: str | Path,
        overwrite: bool = False,
        stride: int = 1,
        min_confidence: float = 0.0,
        normals: bool = False,
    ) -> None:
        if stride < 1:
            raise SinkError(f"point stride {stride} is below 1", hint="use 1 for every pixel, 2 for every other, ...")
        self.directory = Path(directory)
        self.overwrite = overwrite
        self.stride = stride
        self.min_confidence = min_confidence
        self.normals = normals
        self.needs = frozenset({"depth", "image", "confidence"} | ({"normal"} if normals else set()))
        self.name = f"ply:{self.directory.name or '.'}"
        self.frames_written = 0
        self.points_written = 0
        self.meta: dict = {}
        self.intrinsics: tuple[float, float, float, float] | None = None
        self.focals = ImageFocals()
        self.scales = ScaleLog()
        self.stats = None

    def open(self, info: StreamInfo, stats) -> None:
        self.info = info
        self.stats = stats  # the scene cuts for metadata.json, read at close
        prepare_directory(self.directory)

    @property
    def metadata_path(self) -> Path:
        return self.directory / "metadata.json"

    def path_for(self, result: Result) -> Path:
        stem = result.frame.name or f"frame_{result.frame.index:06d}"
        return self.directory / f"{stem}.ply"

    def points(self, result: Result) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """xyz, rgb and (optionally) normals of the kept pixels, in matching order."""
        depth = result.depth
        mask = valid_mask(depth, result.maps.get("confidence"), self.min_confidence)
        fx, fy, cx, cy = self.intrinsics = intrinsics_of(result)
        xyz = backproject(depth, fx, fy, cx, cy, self.stride, mask)
        rgb = sample(colours_of(result), self.stride, mask)
        normals = sample(result.maps["normal"], self.stride, mask) if self.normals else None
        return xyz, rgb, normals

    def write(self, result: Result) -> None:
        path = self.path_for(result)
        if path.exists() and not self.overwrite:
            raise SinkError(f"output {path} already exists", hint="pass --overwrite to replace it")
        xyz, rgb, normals = self.points(result)
        tmp = path.with_name(f".{path.name}.partial")
        try:
            write_ply(tmp, xyz, rgb, normals, comments=(PLY_COMMENT,))
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SinkError(f"writing {path} failed: {exc.strerror}", hint="check free disk space") from exc
        log.debug("ply: wrote %s (%d points)", path, len(xyz))
        self.frames_written += 1
        self.points_written += len(xyz)
        self.meta = result.meta
        self.focals.note(result)
        self.scales.note(result)

    def close(self, complete: bool) -> None:
        if self.frames_written == 0:
            return
        extra = {
            "format": "ply",
            "frames": self.frames_written,
            "points": self.points_written,
            "complete": complete,
            "file_suffix": ".ply",
            "units": "metres",
            "convention": CONVENTION,
            "properties": "x y z (float32 m), "
            + ("nx ny nz (float32 unit), " if self.normals else "")
            + "red green blue (uchar)",
            "stride": self.stride,
            "min_confidence": self.min_confidence,
            "intrinsics_last_frame": dict(zip(("fx", "fy", "cx", "cy"), self.intrinsics or (), strict=False)),
            "focal_source": self.meta.get("focal_source", "unknown"),
        }
        if "focal_note" in self.meta:
            extra["focal_note"] = self.meta["focal_note"]
        extra.update(self.focals.extra())
        extra.update(self.scales.extra())
        write_json(self.metadata_path, sidecar(self.meta, extra, self.stats))
