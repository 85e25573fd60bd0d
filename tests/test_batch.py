"""Batch transcoding: the input tree mirrored, outputs frame-identical to `streamer transcode`,
reruns that skip finished work and continue interrupted work, broken inputs reported while the
others finish, the table and the JSON report; on this machine and on a local Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.batch import run_batch
from streamer.batch.cluster import ACTOR_PREFIX
from streamer.batch.inputs import find_inputs, output_for
from streamer.batch.resume import settings_fingerprint
from streamer.cli.main import main
from streamer.config import load_config, merge
from streamer.errors import ConfigError

from conftest import TINY_INPUT, missing_tool, write_video

TINY = f"{TINY_INPUT[0]}x{TINY_INPUT[1]}"
NAMES = ("a.mp4", "sub/b.mp4", "sub/c.mkv")


def model_flags(checkpoint: Path) -> list[str]:
    # one torch thread: fast on a shared 2-core machine, and the same numbers in every process
    return ["--checkpoint", str(checkpoint), "--input-size", TINY, "--device", "cpu", "--threads", "1"]


def batch_config(checkpoint: Path, **source):
    # torch, said outright: Ray's workers are other processes, which conftest's "auto means torch" does not reach
    model = {"checkpoint": str(checkpoint), "input_size": TINY, "device": "cpu", "runtime": "torch"}
    return load_config(
        None, {"model": model, "engine": {"threads": 1}, "output": {"format": "metric16"}, "source": source}
    )


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray() for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """Three short videos in a tree (5 fps, so a paced run takes a second or two per file)."""
    root = tmp_path_factory.mktemp("library")
    (root / "sub").mkdir()
    write_video(root / "a.mp4", frames=6, size=(64, 48), rate=5)
    write_video(root / "sub/b.mp4", frames=5, size=(64, 48), rate=5, audio=True)
    write_video(root / "sub/c.mkv", frames=8, size=(48, 32), rate=5, codec="ffv1")
    return root


@pytest.fixture(scope="module")
def references(library, checkpoint, tmp_path_factory) -> dict[str, list[np.ndarray]]:
    """What `streamer transcode` makes of each video (lossless uint16 millimetres)."""
    out = tmp_path_factory.mktemp("reference")
    frames = {}
    for name in NAMES:
        target = out / f"{Path(name).stem}.mkv"
        assert (
            main(
                ["transcode", str(library / name), "-o", str(target), "--format", "metric16"] + model_flags(checkpoint)
            )
            == 0
        )
        frames[name] = frames_of(target)
    return frames


def assert_identical(outdir: Path, references: dict, names=NAMES) -> None:
    for name in names:
        got = frames_of(output_for(Path(name), outdir, "mkv"))
        assert len(got) == len(references[name]), name
        for a, b in zip(got, references[name], strict=True):
            assert a.dtype == np.uint16 and np.array_equal(a, b), name


# -- inputs, settings --------------------------------------------------------------------------


def test_inputs_are_files_folders_globs_and_lists(tmp_path, monkeypatch):
    for name in ("v/a.mp4", "v/x/b.mov", "v/x/notes.md", "w/c.mkv", "w/d.avi", "v/out/old.mkv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("# a comment\nw/c.mkv\n\nnope.mp4\n")
    (tmp_path / "more.txt").write_text("w/d.avi\n")
    monkeypatch.chdir(tmp_path)
    found = find_inputs(["v", "@list.txt", "more.txt", "w/*.mkv", "missing.mp4", "z*/*.mp4"], Path("v/out"))
    names = [p.relative_to(tmp_path).as_posix() for p in found.files]
    assert names == ["v/a.mp4", "v/x/b.mov", "w/c.mkv", "w/d.avi"]  # folder order, no repeats, outputs left out
    assert found.missing == ["nope.mp4", "missing.mp4", "z*/*.mp4"]
    assert found.root == tmp_path.resolve()
    assert output_for(Path("v/x/b.mov"), Path("o"), "mkv") == Path("o/v/x/b.mkv")
    assert output_for(Path("v/x/b.mov"), Path("o"), "images") == Path("o/v/x/b")
    assert len(find_inputs(["v/x/*.mov"], Path(".")).files) == 1  # outputs beside the tree, not in it
    with pytest.raises(ConfigError, match="is the inputs' folder"):
        find_inputs(["v", "w"], Path("."))


def test_settings_fingerprint_follows_what_changes_the_output():
    def fingerprint(overrides: dict, container: str = "mkv") -> str:
        return settings_fingerprint(
            load_config(None, merge({"model": {"checkpoint": "/a/w.pth"}}, overrides)), container
        )

    base = fingerprint({})
    same = [
        {"model": {"checkpoint": "/elsewhere/w.pth", "local_files_only": True}},
        {"engine": {"threads": 1, "batch_size": 4}},
        {"output": {"path": "x.mkv", "overwrite": True}},
        {"source": {"uri": "other.mp4", "pace": True}},
    ]
    other = [{"model": {"fx": 500}}, {"output": {"format": "gray"}}, {"source": {"end": 2}}, {"output": {"crf": 20}}]
    assert all(fingerprint(overrides) == base for overrides in same)
    assert all(fingerprint(overrides) != base for overrides in other)
    assert fingerprint({}, "images") != base


# -- one machine -------------------------------------------------------------------------------


def test_batch_mirrors_the_tree_matches_transcode_and_resumes(library, references, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["batch", str(library), "-o", str(out), "--format", "metric16", *model_flags(checkpoint)]
    assert main(args) == 0
    assert_identical(out, references)
    sidecar = json.loads((out / "sub/b.json").read_text())
    assert sidecar["complete"] is True and sidecar["frames"] == 5
    assert (
        sidecar["batch"]["input"] == "sub/b.mp4"
        and sidecar["batch"]["input_size"] == (library / "sub/b.mp4").stat().st_size
    )
    report = json.loads((out / "batch-report.json").read_text())
    assert report["counts"]["done"] == 3 and report["frames"] == 19
    assert [f["relative"] for f in report["files"]] == list(NAMES)
    err = capsys.readouterr().err
    assert "3 done; 19 frames" in err and "wrote " in err
    assert any(line.startswith("done") and "sub/c.mkv" in line for line in err.splitlines())

    assert main(args) == 0  # a rerun: everything is complete
    err = capsys.readouterr().err
    assert "3 skipped; 0 frames" in err and "loading" not in err  # no model loaded for nothing

    before = (out / "a.mkv").stat().st_mtime_ns
    stamp = (library / "sub/c.mkv").stat()
    os.utime(library / "sub/c.mkv", ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))  # the input changed
    try:
        assert main(args) == 0
    finally:
        os.utime(library / "sub/c.mkv", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert "1 done, 2 skipped" in capsys.readouterr().err
    assert (out / "a.mkv").stat().st_mtime_ns == before
    assert_identical(out, references, ["sub/c.mkv"])


def test_broken_missing_and_foreign_inputs_are_reported_and_the_others_finish(library, checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(library / "a.mp4", src / "good.mp4")
    shutil.copy(library / "a.mp4", src / "theirs.mp4")
    (src / "broken.mp4").write_bytes(b"not a video at all" * 64)
    out = tmp_path / "out"
    out.mkdir()
    (out / "theirs.mkv").write_bytes(b"someone else's file")
    args = ["batch", str(src), str(src / "gone.mp4"), "-o", str(out), "--format", "metric16", *model_flags(checkpoint)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "error: 3 of 4 inputs failed" in err
    report = {f["relative"]: f for f in json.loads((out / "batch-report.json").read_text())["files"]}
    assert report["good.mp4"]["status"] == "done" and report["good.mp4"]["frames"] == 6
    assert report["broken.mp4"]["status"] == "failed" and "could not be opened" in report["broken.mp4"]["reason"]
    assert report["theirs.mp4"]["status"] == "failed" and "already exists" in report["theirs.mp4"]["reason"]
    gone = next(f for name, f in report.items() if name.endswith("gone.mp4"))
    assert gone["status"] == "failed" and "names no file" in gone["reason"]
    assert (out / "theirs.mkv").read_bytes() == b"someone else's file"
    assert any(line.startswith("failed") and "broken.mp4" in line for line in err.splitlines())


def test_an_interrupted_batch_continues_where_it_stopped(library, references, checkpoint, tmp_path):
    out = tmp_path / "out"
    cfg = batch_config(checkpoint, pace=True)  # real time: a file takes a second or two

    def ctrl_c(progress) -> None:
        if any(frames >= 1 for frames in progress.active.values()):
            raise KeyboardInterrupt

    first = run_batch(cfg, [str(library)], out, workers=1, progress=ctrl_c)
    statuses = {o.relative: o.status for o in first.outcomes}
    assert first.interrupted and "interrupted" in statuses.values() and "pending" in statuses.values()
    stopped = next(name for name, status in statuses.items() if status == "interrupted")
    partial = output_for(Path(stopped), out, "mkv")
    assert partial.with_name(f"{partial.stem}.partial.mkv").exists() and not partial.exists()

    in_flight: list[int] = []
    second = run_batch(cfg, [str(library)], out, progress=lambda p: in_flight.append(len(p.active)))
    assert not second.interrupted and max(in_flight) == 2  # two files at a time through one model
    assert {o.relative: o.status for o in second.outcomes} == {
        name: "skipped" if status == "done" else "done" for name, status in statuses.items()
    }
    assert_identical(out, references)
    assert not list(out.rglob("*.partial.*"))


# -- a Ray cluster -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster on two CPUs for this module's Ray tests."""
    try:
        import ray
    except ImportError:
        missing_tool("ray is not installed (pip install 'streamer[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_run(ray_cluster, library, checkpoint, tmp_path_factory):
    """The three videos and a broken one on Ray, paced, with the model's worker killed mid-file."""
    ray = ray_cluster
    broken = tmp_path_factory.mktemp("broken") / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 64)
    out = tmp_path_factory.mktemp("ray_out")
    killed: list[int] = []

    def kill_mid_file(progress) -> None:
        if killed or not any(frames >= 1 for frames in progress.active.values()):
            return
        name = next(n for n in ray.util.list_named_actors() if n.startswith(ACTOR_PREFIX))
        pid = ray.get(ray.get_actor(name).pid.remote())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    cfg = batch_config(checkpoint, pace=True)
    report = run_batch(cfg, [str(library), str(broken)], out, workers=2, backend="ray", progress=kill_mid_file)
    return report, out, killed, [str(library), str(broken)]


def test_ray_outputs_match_transcode_after_a_worker_was_killed(ray_run, references, library):
    report, out, killed, _ = ray_run
    assert killed, "the worker was never seen mid-file"
    outcomes = {Path(o.input).name: o for o in report.outcomes}
    assert outcomes["broken.mp4"].status == "failed" and "could not be opened" in outcomes["broken.mp4"].reason
    for name in NAMES:
        outcome = outcomes[Path(name).name]
        assert outcome.status in ("done", "skipped"), outcome  # skipped: finished just before the kill
        assert frames_of(Path(outcome.output)) and all(
            np.array_equal(a, b) for a, b in zip(frames_of(Path(outcome.output)), references[name], strict=True)
        )
        assert json.loads(Path(outcome.output).with_suffix(".json").read_text())["complete"] is True
    assert not list(out.rglob("*.partial.*"))
    assert report.backend == "ray" and json.loads((out / "batch-report.json").read_text())["counts"]["failed"] == 1


def test_ray_rerun_skips_all_three(ray_run, checkpoint):
    _, out, _, inputs = ray_run
    report = run_batch(batch_config(checkpoint), inputs, out, backend="ray")
    statuses = sorted(o.status for o in report.outcomes)
    assert statuses == ["failed", "skipped", "skipped", "skipped"]
