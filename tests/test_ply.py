"""PLY point clouds land on the surfaces the depth describes, in metres, readable by plyfile."""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from streamer.errors import SinkError
from streamer.sinks.ply import PlySink, backproject, valid_mask, write_ply
from streamer.types import Frame, Result, StreamInfo

try:
    import plyfile
except ImportError:  # a dev dependency: skipped on a bare install, a failure in CI
    if os.environ.get("CI"):
        raise
    pytest.skip("plyfile is not installed (pip install plyfile)", allow_module_level=True)

H, W = 48, 64
FX = FY = 500.0
CX, CY = (W - 1) / 2, (H - 1) / 2


def rays() -> np.ndarray:
    """(H, W, 3) pinhole rays with z = 1 for the test camera."""
    v, u = np.indices((H, W), dtype=np.float64)
    return np.stack([(u - CX) / FX, (v - CY) / FY, np.ones_like(u)], axis=-1)


def plane_depth(normal: tuple[float, float, float], distance: float) -> np.ndarray:
    """Depth (z) of the plane n . X = distance seen along each pixel's ray."""
    n = np.asarray(normal) / np.linalg.norm(normal)
    return (distance / (rays() @ n)).astype(np.float32)


def coded_image() -> np.ndarray:
    """Each pixel's colour encodes its column and row, so colours can be traced back to pixels."""
    v, u = np.indices((H, W))
    return np.stack([u * 3, v * 5, np.full_like(u, 77)], axis=-1).astype(np.uint8)


def make_result(depth: np.ndarray, index: int = 0, name: str = "", confidence: np.ndarray | None = None) -> Result:
    image = coded_image()
    maps = {
        "depth": depth,
        "image": image,
        "confidence": np.ones((H, W), np.float32) if confidence is None else confidence,
        "normal": np.broadcast_to(np.float32([0, 0, -1]), (H, W, 3)).copy(),
    }
    meta = {"fx": FX, "fy": FY, "intrinsics": (FX, FY, CX, CY), "focal_source": "given", "backbone": "vit-small"}
    return Result(Frame(image, index, index, Fraction(1, 10), 0.0, name), maps, meta)


def run_sink(tmp_path: Path, results: list[Result], **kwargs) -> Path:
    out = tmp_path / "clouds"
    sink = PlySink(out, **kwargs)
    sink.open(StreamInfo(W, H, Fraction(1, 10), None, False), None)
    for result in results:
        sink.write(result)
    sink.close(True)
    return out


def read_vertices(path: Path) -> np.ndarray:
    return plyfile.PlyData.read(str(path))["vertex"].data


def xyz_of(vertices: np.ndarray) -> np.ndarray:
    return np.stack([vertices["x"], vertices["y"], vertices["z"]], axis=1).astype(np.float64)


def pixels_of(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project points back to integer pixel columns and rows."""
    u = np.rint(xyz[:, 0] * FX / xyz[:, 2] + CX).astype(int)
    v = np.rint(xyz[:, 1] * FY / xyz[:, 2] + CY).astype(int)
    return u, v


def test_fronto_parallel_plane_is_at_its_distance_with_a_standard_header(tmp_path):
    out = run_sink(tmp_path, [make_result(np.full((H, W), 2.5, np.float32))])
    path = out / "frame_000000.ply"
    header = path.read_bytes().split(b"end_header\n")[0].decode("ascii")
    assert header.startswith("ply\nformat binary_little_endian 1.0\n")
    assert f"element vertex {H * W}\n" in header
    for line in ("float x", "float y", "float z", "uchar red", "uchar green", "uchar blue"):
        assert f"property {line}\n" in header
    element = plyfile.PlyData.read(str(path))["vertex"]
    assert [p.name for p in element.properties] == ["x", "y", "z", "red", "green", "blue"]
    xyz = xyz_of(element.data)
    assert len(xyz) == H * W
    np.testing.assert_allclose(xyz[:, 2], 2.5, rtol=1e-6)
    # The image's corners are at (u - cx) * z / fx metres from the axis.
    np.testing.assert_allclose([xyz[:, 0].min(), xyz[:, 0].max()], [-CX * 2.5 / FX, CX * 2.5 / FX], rtol=1e-5)
    np.testing.assert_allclose([xyz[:, 1].min(), xyz[:, 1].max()], [-CY * 2.5 / FY, CY * 2.5 / FY], rtol=1e-5)


def test_tilted_plane_points_lie_on_the_plane_and_keep_their_colours(tmp_path):
    normal = np.array([0.0, -0.4, 1.0]) / math.hypot(0.4, 1.0)
    out = run_sink(tmp_path, [make_result(plane_depth(tuple(normal), 2.5))])
    vertices = read_vertices(out / "frame_000000.ply")
    xyz = xyz_of(vertices)
    np.testing.assert_allclose(xyz @ normal, 2.5, rtol=0.01)
    # A least-squares plane through the points recovers the normal too.
    centred = xyz - xyz.mean(axis=0)
    fitted = np.linalg.svd(centred, full_matrices=False)[2][-1]
    assert abs(abs(fitted @ normal) - 1) < 1e-4
    u, v = pixels_of(xyz)
    np.testing.assert_array_equal(vertices["red"], (u * 3).astype(np.uint8))
    np.testing.assert_array_equal(vertices["green"], (v * 5).astype(np.uint8))
    assert (vertices["blue"] == 77).all()


def test_stride_keeps_every_nth_pixel_in_both_axes(tmp_path):
    out = run_sink(tmp_path, [make_result(np.full((H, W), 2.0, np.float32))], stride=3)
    xyz = xyz_of(read_vertices(out / "frame_000000.ply"))
    assert len(xyz) == math.ceil(H / 3) * math.ceil(W / 3)
    u, v = pixels_of(xyz)
    assert (u % 3 == 0).all() and (v % 3 == 0).all()
    assert set(u) == set(range(0, W, 3)) and set(v) == set(range(0, H, 3))


def test_pixels_without_depth_or_with_low_confidence_are_dropped(tmp_path):
    depth = np.full((H, W), 3.0, np.float32)
    depth[0, :4] = [0.0, -1.0, np.nan, np.inf]
    confidence = np.ones((H, W), np.float32)
    confidence[10:20, 10:20] = 0.1
    out = run_sink(tmp_path, [make_result(depth, confidence=confidence)], min_confidence=0.5)
    xyz = xyz_of(read_vertices(out / "frame_000000.ply"))
    assert len(xyz) == H * W - 4 - 100
    assert np.isfinite(xyz).all() and (xyz[:, 2] > 0).all()
    u, v = pixels_of(xyz)
    assert not ((u >= 10) & (u < 20) & (v >= 10) & (v < 20)).any()
    assert not ((v == 0) & (u < 4)).any()


def test_normals_are_written_when_asked(tmp_path):
    sink = PlySink(tmp_path / "n", normals=True)
    assert sink.needs == {"depth", "image", "confidence", "normal"}
    out = run_sink(tmp_path, [make_result(np.full((H, W), 1.0, np.float32))], normals=True, stride=4)
    element = plyfile.PlyData.read(str(out / "frame_000000.ply"))["vertex"]
    assert [p.name for p in element.properties] == ["x", "y", "z", "nx", "ny", "nz", "red", "green", "blue"]
    np.testing.assert_array_equal(element.data["nz"], -1.0)
    assert PlySink(tmp_path / "m").needs == {"depth", "image", "confidence"}


def test_files_are_named_after_frames_and_a_sidecar_says_how_to_read_them(tmp_path):
    depth = np.full((H, W), 2.5, np.float32)
    out = run_sink(tmp_path, [make_result(depth, 0), make_result(depth, 1), make_result(depth, 2, name="IMG_0042")])
    assert sorted(p.name for p in out.iterdir()) == [
        "IMG_0042.ply",
        "frame_000000.ply",
        "frame_000001.ply",
        "metadata.json",
    ]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["units"] == "metres" and meta["format"] == "ply" and meta["frames"] == 3
    assert meta["stride"] == 1 and meta["focal_source"] == "given" and meta["fx"] == FX
    assert "x right, y down, z forward" in meta["convention"]
    assert meta["intrinsics_last_frame"] == {"fx": FX, "fy": FY, "cx": CX, "cy": CY}


def test_existing_files_are_refused_unless_overwrite(tmp_path):
    depth = np.full((H, W), 2.5, np.float32)
    out = run_sink(tmp_path, [make_result(depth)])
    sink = PlySink(out)
    sink.open(StreamInfo(W, H, Fraction(1, 10), None, False), None)
    with pytest.raises(SinkError, match="already exists"):
        sink.write(make_result(depth))
    run_sink(tmp_path, [make_result(np.full((H, W), 4.0, np.float32))], overwrite=True)
    np.testing.assert_allclose(read_vertices(out / "frame_000000.ply")["z"], 4.0)
    assert not list(out.glob(".*partial"))


def test_missing_output_folder_parent_is_refused_at_open(tmp_path):
    with pytest.raises(SinkError, match="does not exist"):
        PlySink(tmp_path / "nope" / "clouds").open(StreamInfo(W, H, Fraction(1), None, False), None)


def test_an_empty_cloud_is_still_a_valid_file(tmp_path):
    path = tmp_path / "empty.ply"
    write_ply(path, np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
    assert len(read_vertices(path)) == 0


def test_backproject_matches_the_pinhole_model_and_the_mask():
    depth = np.arange(1, H * W + 1, dtype=np.float32).reshape(H, W) / 100
    mask = valid_mask(depth)
    mask[5, 7] = False
    xyz = backproject(depth, FX, FY, CX, CY, stride=1, mask=mask)
    assert xyz.dtype == np.float32 and xyz.shape == (H * W - 1, 3)
    full = backproject(depth, FX, FY, CX, CY)
    expected = rays().reshape(-1, 3) * depth.reshape(-1, 1)
    np.testing.assert_allclose(full, expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError):
        backproject(depth, FX, FY, CX, CY, stride=0)
