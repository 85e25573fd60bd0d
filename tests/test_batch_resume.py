"""Batch resume is exact and its ends are honest: shorter reruns of frame sequences leave no stale
frames, a crash between an output's rename and its sidecar leaves an output the next run knows
as its own, the device and precision are in the settings hash, the same file through another root
is recognised, a damaged input is reported alike on every run, and an unwritable output folder is
refused up front. All with --processor null: the model is not the point here."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

import streamer.sinks.video
from streamer.batch.resume import runs_on, settings_fingerprint
from streamer.cli.main import main
from streamer.config import load_config

from conftest import write_video

NULL = ["--processor", "null", "--device", "cpu", "--threads", "1"]


@pytest.fixture
def videos(tmp_path) -> Path:
    """a.mp4 (2 s at 10 fps) and sub/b.mp4 (1 s)."""
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    write_video(root / "a.mp4", frames=20, size=(64, 48), rate=10)
    write_video(root / "sub/b.mp4", frames=10, size=(64, 48), rate=10)
    return root


def batch(capsys, *args: str) -> tuple[int, str, dict]:
    """Run `streamer batch`; -> (exit code, stderr, the report's files by input name)."""
    code = main(["batch", *args, *NULL])
    err = capsys.readouterr().err
    out = Path(args[args.index("-o") + 1])
    report = out / "batch-report.json"
    files = {f["relative"]: f for f in json.loads(report.read_text())["files"]} if report.exists() else {}
    return code, err, files


@pytest.mark.parametrize(("fmt", "suffix"), [("metric16", ".png"), ("exr", ".exr")])
def test_a_shorter_rerun_of_a_frame_sequence_leaves_no_stale_frames(videos, tmp_path, capsys, fmt, suffix):
    out = tmp_path / "out"
    flags = ["--format", fmt, "--container", "images"]
    assert batch(capsys, str(videos / "a.mp4"), "-o", str(out), *flags)[0] == 0
    assert len(list((out / "a").glob(f"frame_*{suffix}"))) == 20
    # other settings (a trim): the sequence is made again, shorter
    code, err, files = batch(capsys, str(videos / "a.mp4"), "-o", str(out), *flags, "--end", "1.0")
    assert code == 0 and files["a.mp4"]["status"] == "done", err
    sidecar = json.loads((out / "a/metadata.json").read_text())
    assert sidecar["frames"] == 10 and sidecar["complete"] is True
    frames = [f"frame_{i:06d}{suffix}" for i in range(10)]
    assert sorted(p.name for p in (out / "a").iterdir()) == [*frames, "metadata.json"]


def test_a_crash_between_rename_and_sidecar_leaves_an_output_the_rerun_makes_again(
    videos, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    real_write_json = streamer.sinks.video.write_json

    def crash_before_the_final_sidecar(path: Path, data: dict) -> None:
        if not path.name.endswith(".partial.json"):
            raise OSError("the machine went down")  # the video is renamed, its sidecar never written
        real_write_json(path, data)

    monkeypatch.setattr(streamer.sinks.video, "write_json", crash_before_the_final_sidecar)
    batch(capsys, str(videos / "a.mp4"), "-o", str(out))
    assert (out / "a.mp4").is_file() and not (out / "a.partial.mp4").exists()
    assert json.loads((out / "a.json").read_text())["complete"] is False  # the claim, written before the run
    monkeypatch.undo()

    code, err, files = batch(capsys, str(videos / "a.mp4"), "-o", str(out))
    assert code == 0 and files["a.mp4"]["status"] == "done", err  # the batch's own: made again, not "foreign"
    sidecar = json.loads((out / "a.json").read_text())
    assert sidecar["complete"] is True and sidecar["frames"] == 20


def test_a_failed_file_leaves_no_claim_behind(videos, tmp_path, capsys):
    out = tmp_path / "out"
    code, err, files = batch(capsys, str(videos / "a.mp4"), "-o", str(out), "--start", "30")
    assert code == 1 and files["a.mp4"]["status"] == "failed"
    assert sorted(p.name for p in out.iterdir()) == ["batch-report.json"]


def test_device_and_precision_are_part_of_the_settings_hash():
    cfg = load_config(None, {"model": {"checkpoint": "/a/w.pth"}})
    cpu = settings_fingerprint(cfg, "mkv", ("cpu", "float32"))
    assert settings_fingerprint(cfg, "mkv", ("cuda", "float16")) != cpu
    assert settings_fingerprint(cfg, "mkv", ("cuda", "float32")) != cpu
    assert settings_fingerprint(cfg, "mkv", ("cpu", "bfloat16")) != cpu
    # what is resolved counts, not how it was asked for: cuda:1 is cuda, auto on a CPU is fp32 on cpu
    assert runs_on(load_config(None, {"model": {"device": "cpu", "precision": "auto"}})) == ("cpu", "float32")
    assert runs_on(load_config(None, {"model": {"device": "cpu", "precision": "bf16"}})) == ("cpu", "bfloat16")
    explicit = load_config(None, {"model": {"checkpoint": "/a/w.pth", "device": "cpu", "precision": "fp32"}})
    assert settings_fingerprint(explicit, "mkv", runs_on(explicit)) == cpu


def test_the_same_file_through_another_root_is_recognised(videos, tmp_path, capsys):
    out = tmp_path / "out"
    assert batch(capsys, str(videos), "-o", str(out))[0] == 0
    made = (out / "sub/b.mp4").stat().st_mtime_ns

    code, err, files = batch(capsys, str(videos / "sub/b.mp4"), "-o", str(out))  # its root is now sub/
    assert code == 0 and files["b.mp4"]["status"] == "skipped", err
    assert files["b.mp4"]["output"] == str(out / "sub/b.mp4") and not (out / "b.mp4").exists()
    code, err, files = batch(capsys, str(videos.parent), "-o", str(out))  # a root above: videos/sub/b.mp4
    assert code == 0 and {f["status"] for f in files.values()} == {"skipped"}, err
    try:
        (tmp_path / "link").symlink_to(videos, target_is_directory=True)
    except OSError:  # Windows without the privilege
        return
    code, err, files = batch(capsys, str(tmp_path / "link"), "-o", str(out))
    assert code == 0 and {f["status"] for f in files.values()} == {"skipped"}, err
    assert (out / "sub/b.mp4").stat().st_mtime_ns == made


def test_a_different_file_of_the_same_name_size_and_time_is_not_taken_for_it(videos, tmp_path, capsys):
    out = tmp_path / "out"
    assert batch(capsys, str(videos / "sub/b.mp4"), "-o", str(out))[0] == 0
    other = tmp_path / "other"
    other.mkdir()
    data = bytearray((videos / "sub/b.mp4").read_bytes())
    assert data[4:8] == b"ftyp"
    data[15] ^= 1  # same size, other content: the ftyp box's minor version, which no player reads
    (other / "b.mp4").write_bytes(bytes(data))
    stamp = (videos / "sub/b.mp4").stat()
    os.utime(other / "b.mp4", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    code, err, files = batch(capsys, str(other / "b.mp4"), "-o", str(out))
    assert files["b.mp4"]["status"] == "done", err  # made again: not the file the output came from


def truncated_mkv(path: Path) -> Path:
    """An FFV1 .mkv cut mid-file (an .mp4 keeps its index at the end and is unreadable when cut)."""
    full = write_video(path.with_name("full.mkv"), frames=30, codec="ffv1")
    path.write_bytes(full.read_bytes()[: full.stat().st_size * 55 // 100])
    full.unlink()
    return path


def test_a_damaged_input_is_reported_alike_on_every_run(videos, tmp_path, capsys):
    truncated_mkv(videos / "cut.mkv")
    out = tmp_path / "out"
    runs = [batch(capsys, str(videos), "-o", str(out)) for _ in range(2)]
    for code, err, files in runs:
        assert code == 1 and "error: 1 of 3 inputs failed" in err
        assert files["cut.mkv"]["status"] == "failed"
        assert "is damaged" in files["cut.mkv"]["reason"] and "could be decoded" in files["cut.mkv"]["reason"]
    first, second = runs[0][2]["cut.mkv"], runs[1][2]["cut.mkv"]
    assert (second["reason"], second["frames"]) == (first["reason"], first["frames"]) and 5 < first["frames"] < 30
    assert runs[1][2]["a.mp4"]["status"] == "skipped"
    sidecar = json.loads((out / "cut.json").read_text())
    assert sidecar["complete"] is True and sidecar["frames"] == first["frames"] and "damage" in sidecar


def test_batch_into_a_file_says_it_is_not_a_directory(videos, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, err, _ = batch(capsys, str(videos), "-o", str(tmp_path / "afile/out"))
    assert code == 1 and "afile is not a directory" in err and "unexpected" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="folder permissions are ACLs on Windows")
def test_batch_into_an_unwritable_folder_says_so_before_reading_anything(tmp_path, capsys):
    """As every other command: one line, exit 1. Root writes anywhere, so as root the command runs
    as the user `nobody`, for whom the folder's mode counts."""
    locked = Path(tempfile.mkdtemp())
    try:
        locked.chmod(0o555)
        args = ["batch", "missing.mp4", "-o", str(locked / "out"), *NULL]
        if os.geteuid() != 0:
            code, err = main(args), capsys.readouterr().err
        else:
            code, err = run_as_nobody(args)
        assert code == 1, err
        assert err.strip().splitlines() == [
            f"error: output directory {locked} is not writable; choose a directory you can write to"
        ]
    finally:
        locked.chmod(0o755)
        locked.rmdir()


def run_as_nobody(args: list[str]) -> tuple[int, str]:
    """The CLI in a forked child that has become `nobody` (this interpreter, already loaded: nobody
    may not be able to start the venv's), its stderr back through a pipe -> (exit code, stderr)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.close(read)
            sys.stderr = open(write, "w")  # noqa: SIM115 (the child ends with os._exit)
            os.setgid(65534)
            os.setuid(65534)
            code = main(args)
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write)
    with open(read) as pipe:
        err = pipe.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err


def test_batch_with_the_null_processor_names_no_model(videos, tmp_path, capsys):
    code, err, _ = batch(capsys, str(videos), "-o", str(tmp_path / "out"))
    assert code == 0 and "vit-small" not in err and "loading" not in err
    assert "processor null, no model" in err
