"""Every command explains itself; errors are one line with a fix, exit codes say what happened."""

from __future__ import annotations

import cv2

import json
import subprocess
import sys

import numpy as np
import pytest

from streamer.cli.main import main

from conftest import DATA, TINY_INPUT

COMMANDS = ["preview", "transcode", "virtualcam", "depth", "bench", "doctor", "serve", "batch", "export"]
MODEL_FLAGS = ["--backbone", "--checkpoint", "--fx", "--fy", "--resolution", "--input-size", "--device", "--precision"]
TINY = f"{TINY_INPUT[0]}x{TINY_INPUT[1]}"


def test_top_level_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: streamer " + command in out
    if command in ("preview", "transcode", "virtualcam", "depth", "bench", "export"):
        for flag in MODEL_FLAGS:
            assert flag in out, (command, flag)
        assert "Example" in out and "[default: vit-small]" in out


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "streamer", "--version"], capture_output=True, text=True, check=True)
    assert "streamer, version" in out.stdout


def test_usage_error_exits_2(capsys):
    assert main(["transcode"]) == 2
    assert main(["depth", "x.png", "-o", "out", "--fx", "abc"]) == 2
    assert main(["nosuchcommand"]) == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["transcode", "missing.mp4", "-o", "o.mp4"], "input missing.mp4 does not exist; check the path"),
        (["transcode", "in.mp4", "-o", "o.mp4", "--fx", "0"], "bad value for 'model.fx': 0.0"),
        (["transcode", "in.mp4", "-o", "o.mp4", "--input-size", "100x100"], "multiples of 28"),
        (["depth", "nope.png", "-o", "out"], "input nope.png does not exist"),
        (["transcode", "in.mp4", "-o", "frame.png", "--format", "metric16"], "written into a directory: -o frame/"),
    ],
)
def test_bad_input_is_one_line_without_traceback(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.mp4").write_bytes(b"")
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: ")


def test_doctor_reports_every_component(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for item in (
        "python",
        "torch",
        "cuda",
        "sdpa kernels",
        "pyav",
        "encoders",
        "opencv gui",
        "cameras",
        "virtual camera",
        "checkpoints",
        "controlnet_aux",
    ):
        assert f"] {item}" in out, item
    assert "ffv1" in out and "libx264" in out
    assert "fix:" in out  # no GPU here: the cuda line says how to fix it


def test_depth_writes_picture_and_metric_npz(tmp_path, checkpoint, capsys):
    image = cv2.imread(str(DATA / "golden_input.png"))
    cv2.imwrite(str(tmp_path / "a.png"), image)
    cv2.imwrite(str(tmp_path / "b.jpg"), image[:100, :150])
    out = tmp_path / "out"
    args = [
        "depth",
        str(tmp_path / "a.png"),
        str(tmp_path / "b.jpg"),
        "-o",
        str(out),
        "--checkpoint",
        str(checkpoint),
        "--input-size",
        TINY,
        "--fx",
        "500",
        "--fy",
        "600",
    ]
    assert main(args) == 0, capsys.readouterr().err
    for name, shape in (("a", (240, 320)), ("b", (100, 150))):
        data = np.load(out / f"{name}.npz")
        assert data["depth"].shape == shape and data["depth"].dtype == np.float32
        assert data["normal"].shape == (*shape, 3)
        assert data["confidence"].shape == shape
        assert (float(data["fx"]), float(data["fy"])) == (500.0, 600.0)
        assert cv2.imread(str(out / f"{name}.png")).shape == (*shape, 3)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["fx"] == 500.0 and meta["backbone"] == "vit-small"


def test_depth_comfy_mode_writes_the_node_pictures(tmp_path, checkpoint, capsys):
    cv2.imwrite(str(tmp_path / "g.png"), cv2.imread(str(DATA / "golden_input.png")))
    out = tmp_path / "comfy"
    args = [
        "depth",
        str(tmp_path / "g.png"),
        "-o",
        str(out),
        "--comfy",
        "--resolution",
        "240",
        "--checkpoint",
        str(checkpoint),
    ]
    assert main(args) == 0, capsys.readouterr().err
    golden = np.load(DATA / "golden_vit_small_comfy.npz")
    depth = cv2.cvtColor(cv2.imread(str(out / "g.png")), cv2.COLOR_BGR2RGB)
    normal = cv2.cvtColor(cv2.imread(str(out / "g_normal.png")), cv2.COLOR_BGR2RGB)
    assert np.abs(depth.astype(int) - golden["comfy_depth_u8"]).max() <= 1
    assert np.abs(normal.astype(int) - golden["comfy_normal_u8"]).max() <= 1


def test_bench_writes_every_figure_as_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--device",
        "cpu",
        "--input-size",
        TINY,
        "--frames",
        "3",
        "--source-size",
        "96x64",
        "--memory-factor",
        "2",
        "--live-fps",
        "20",
        "--repeat",
        "2",
        "--json",
        str(out),
    ]
    assert main(args) == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    for key in ("model_only", "serial", "pipeline", "live_out"):
        assert result["fps"][key] > 0
    assert set(result["ratio"]) == {"pipeline_vs_model_only", "pipeline_vs_serial"}
    assert {"p50", "p95"} <= set(result["latency_ms"])
    assert {
        "frames_dropped",
        "peak_rss_mb",
        "device",
        "torch",
        "backbone",
        "input_size",
        "precision",
        "batch_size",
    } <= set(result)
    assert result["memory"]["frames_long"] == 6 and "rss_growth_pct" in result["memory"]
    assert set(result["stabilize_ms"]) == {"causal", "lookahead"} and min(result["stabilize_ms"].values()) > 0
    assert result["repeat"] == 2 and min(result["model_stage_ms"].values()) > 0
    out = capsys.readouterr().out
    assert "pipeline / model only" in out and "stabiliser per frame causal / lookahead" in out


BENCH_NULL = ["bench", "--processor", "null", "--device", "cpu", "--source-size", "64x48", "--memory-factor", "1"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--formats", "ply,bogus"], "unknown format 'bogus'"),
        (["--frames", "0"], "'--frames': 0 is not in the range"),
        (["--frames", "-1"], "'--frames': -1 is not in the range"),
        (["--source-size", "1x1"], "use even sides of at least 16"),
        (["--source-size", "65x48"], "use even sides of at least 16"),
        (["--live-fps", "0"], "'--live-fps'"),
    ],
)
def test_bench_refuses_bad_flags_in_one_line(capsys, flags, message):
    """These once ended in unexpected KeyError, IndexError and ExternalError."""
    assert main([*BENCH_NULL, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "unexpected" not in err


def test_bench_measures_image_sequences_and_point_clouds(tmp_path, capsys):
    """exr, npz and ply are written into a folder: the bench once refused them for lack of -o."""
    out = tmp_path / "bench.json"
    args = [*BENCH_NULL, "--frames", "2", "--repeat", "1", "--formats", "exr,npz,ply,metric16", "--json", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    formats = json.loads(out.read_text())["formats"]
    assert set(formats) == {"exr", "npz", "ply", "metric16"} and min(f["fps"] for f in formats.values()) > 0


def test_a_command_puts_the_callers_signal_handlers_back(tmp_path, capsys):
    """main() also runs inside processes that go on (this test suite, a user's script): the
    handlers it installs for one command must not outlive it, or a Ctrl-C counted by one command
    makes the next command's first Ctrl-C a forced exit (os._exit) of the whole process."""
    import signal

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    for _ in range(2):
        assert main(["doctor"]) == 0
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    capsys.readouterr()
