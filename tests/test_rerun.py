"""The Rerun sink records every frame, its camera and its metric depth, on the frame's own timelines."""

from __future__ import annotations

import ast
import importlib
import socket
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import streamer.sinks.rerun as rerun_sink
from streamer.errors import SinkError
from streamer.sinks.rerun import RerunSink
from streamer.types import Frame, Result, StreamInfo

from conftest import missing_tool

H, W = 24, 32
FX, FY, CX, CY = 500.0, 510.0, 15.5, 11.5
TIME_BASE = Fraction(1, 90000)
PTS = [0, 3000, 9000]  # variable frame rate: 0, 1/30 s, 1/10 s


def need_rerun():
    """The rerun module; skipped without rerun-sdk, except in CI where its absence is a failure."""
    try:
        return importlib.import_module("rerun")
    except ImportError:
        missing_tool("rerun-sdk is not installed (pip install rerun-sdk)")


def make_result(index: int) -> Result:
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = 40 * index
    depth = np.full((H, W), 1.0 + index, np.float32)
    depth[0, 0] = 0.0  # no depth: no point
    maps = {"depth": depth, "image": image, "confidence": np.ones((H, W), np.float32)}
    meta = {"intrinsics": (FX, FY, CX, CY), "fx": FX, "fy": FY, "focal_source": "given"}
    return Result(Frame(image, index, PTS[index], TIME_BASE, 0.0), maps, meta)


def record(path: Path, frames: int = 3, **kwargs) -> RerunSink:
    sink = RerunSink(save=path, **kwargs)
    sink.open(StreamInfo(W, H, TIME_BASE, None, False), None)
    for index in range(frames):
        sink.write(make_result(index))
    sink.close(True)
    return sink


def read_columns(path: Path) -> dict[str, dict[str, list]]:
    """Per entity path, each column of its temporal chunks as a Python list (rerun.chunk.RrdReader)."""
    pa = pytest.importorskip("pyarrow")  # a dependency of rerun-sdk
    try:
        from rerun.chunk import RrdReader
    except ImportError:
        pytest.skip("this rerun-sdk has no rerun.chunk.RrdReader to read .rrd files back")
    columns: dict[str, dict[str, list]] = {}
    for chunk in RrdReader(path).stream().to_chunks():
        if chunk.is_static:
            continue
        batch = chunk.to_record_batch()
        entity = columns.setdefault(chunk.entity_path, {})
        for field in batch.schema:
            column = batch.column(field.name)
            if pa.types.is_temporal(field.type):  # timelines: integer nanoseconds, exact
                column = column.cast(pa.int64())
            entity.setdefault(field.name, []).extend(column.to_pylist())
    return columns


def by_frame(entity: dict[str, list], column: str) -> list:
    """A column's values ordered by the `frame` sequence."""
    return [value for _, value in sorted(zip(entity["frame"], entity[column], strict=True))]


def test_rrd_holds_every_frame_with_its_intrinsics_time_and_depth(tmp_path):
    need_rerun()
    path = tmp_path / "run.rrd"
    record(path)
    assert path.exists() and not (tmp_path / "run.partial.rrd").exists()
    columns = read_columns(path)
    camera = columns["/camera"]
    assert sorted(camera["frame"]) == [0, 1, 2]
    # image_from_camera is stored column-major: [fx 0 0 | 0 fy 0 | cx cy 1].
    for matrix in by_frame(camera, "Pinhole:image_from_camera"):
        np.testing.assert_allclose(np.ravel(matrix), [FX, 0, 0, 0, FY, 0, CX, CY, 1])
    assert [np.ravel(r).tolist() for r in by_frame(camera, "Pinhole:resolution")] == [[W, H]] * 3
    nanoseconds = by_frame(camera, "time")
    assert nanoseconds == pytest.approx([float(p * TIME_BASE) * 1e9 for p in PTS], abs=1)
    depth = columns["/camera/depth"]
    assert sorted(depth["frame"]) == [0, 1, 2]
    assert np.ravel(by_frame(depth, "DepthImage:meter")).tolist() == [1.0] * 3
    buffers = [
        np.frombuffer(bytes(np.ravel(b).astype(np.uint8)), np.float32) for b in by_frame(depth, "DepthImage:buffer")
    ]
    assert [float(np.median(b)) for b in buffers] == [1.0, 2.0, 3.0]
    assert sorted(columns["/camera/image"]["frame"]) == [0, 1, 2]
    assert "/world/points" not in columns


def test_point_cloud_is_logged_thinned_and_without_invalid_pixels(tmp_path):
    need_rerun()
    path = tmp_path / "points.rrd"
    sink = record(path, frames=2, points=True, stride=4)
    assert sink.needs == {"depth", "image", "confidence"}
    points = read_columns(path)["/world/points"]
    positions = by_frame(points, "Points3D:positions")
    assert [len(p) for p in positions] == [(H // 4) * (W // 4) - 1] * 2  # pixel (0, 0) has no depth
    xyz = np.array(positions[1], dtype=np.float64)
    np.testing.assert_allclose(xyz[:, 2], 2.0)
    u = xyz[:, 0] * FX / xyz[:, 2] + CX
    np.testing.assert_allclose(u, np.rint(u), atol=1e-3)
    assert set(np.rint(u).astype(int)) == set(range(0, W, 4))


def test_existing_recording_is_refused_unless_overwrite(tmp_path):
    need_rerun()
    path = tmp_path / "run.rrd"
    path.write_bytes(b"old")
    with pytest.raises(SinkError, match="already exists"):
        RerunSink(save=path).open(StreamInfo(W, H, TIME_BASE, None, False), None)
    record(path, frames=1, overwrite=True)
    assert sorted(read_columns(path)["/camera"]["frame"]) == [0]


def test_an_interrupted_run_keeps_the_partial_name(tmp_path):
    need_rerun()
    sink = RerunSink(save=tmp_path / "cut.rrd")
    sink.open(StreamInfo(W, H, TIME_BASE, None, True), None)
    sink.write(make_result(0))
    sink.close(False)
    assert (tmp_path / "cut.partial.rrd").exists() and not (tmp_path / "cut.rrd").exists()


def test_missing_sdk_is_a_sink_error_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rerun", None)  # import rerun now raises ImportError
    with pytest.raises(SinkError) as caught:
        RerunSink(save=tmp_path / "x.rrd").open(StreamInfo(W, H, TIME_BASE, None, False), None)
    assert 'pip install "streamer[rerun]"' in caught.value.hint
    # The module itself imports without the SDK: it names rerun only inside functions.
    tree = ast.parse(Path(rerun_sink.__file__).read_text())
    top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert not any(getattr(n, "module", None) == "rerun" or any(a.name == "rerun" for a in n.names) for n in top_level)


def test_a_sink_with_nowhere_to_send_is_refused():
    with pytest.raises(SinkError, match="viewer or a file"):
        RerunSink()
    assert RerunSink(spawn=True).live and RerunSink(spawn=True).needs == {"depth", "image"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_viewer_and_file_at_once(tmp_path):
    rr = need_rerun()
    server = rr.RecordingStream("viewer-stand-in")
    url = server.serve_grpc(grpc_port=free_port())  # a gRPC proxy, as a viewer would run
    try:
        record(tmp_path / "both.rrd", frames=2, connect=url)
    finally:
        server.disconnect()
    assert sorted(read_columns(tmp_path / "both.rrd")["/camera"]["frame"]) == [0, 1]


def test_an_unreachable_viewer_is_refused_at_open():
    need_rerun()
    url = f"rerun+http://127.0.0.1:{free_port()}/proxy"
    with pytest.raises(SinkError, match="no Rerun viewer answers"):
        RerunSink(connect=url).open(StreamInfo(W, H, TIME_BASE, None, True), None)


def test_spawning_a_viewer_without_a_display_is_refused_at_open(monkeypatch):
    need_rerun()
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SinkError, match="no display"):
        RerunSink(spawn=True).open(StreamInfo(W, H, TIME_BASE, None, True), None)
