"""Image inputs and outputs end to end with `--processor null`: names that clash, `-o` kinds, printf
patterns and frame rates, palette transparency, animations, and what the NPZ sidecar lists."""

from __future__ import annotations

import json
import logging
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from streamer.api import stabilize_mode
from streamer.cli.main import main
from streamer.config import load_config
from streamer.focal import exif_upright
from streamer.sources.images import ImageSource, printf_matches

from conftest import write_video

NULL = ["--processor", "null", "--device", "cpu"]


def picture(path: Path, value: int = 100, size: tuple[int, int] = (24, 16), **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path, **save)
    return path


def run(*args: str) -> int:
    return main([*args, *NULL])


def test_two_images_of_one_name_get_two_results(tmp_path, capsys):
    tiff, webp = picture(tmp_path / "img.tiff", 30), picture(tmp_path / "img.webp", 200, lossless=True)
    out = tmp_path / "out"
    assert run("depth", str(tiff), str(webp), "-o", str(out), "--format", "metric16") == 0, capsys.readouterr().err
    assert "done: 2 images" in capsys.readouterr().err
    far, near = (np.asarray(Image.open(out / f"img_{ext}.png")) for ext in ("tiff", "webp"))
    assert far.mean() > near.mean()  # each its own image (null: brighter is nearer), neither replaced
    assert not (out / "img.png").exists()
    again = tmp_path / "again"  # a folder holding both: the same names
    assert run("depth", str(tmp_path), "-o", str(again), "--format", "metric16") == 0, capsys.readouterr().err
    assert sorted(p.name for p in again.glob("*.png")) == ["img_tiff.png", "img_webp.png"]


def test_names_that_still_clash_are_refused_before_anything_is_written(tmp_path, capsys):
    a, b = picture(tmp_path / "a" / "img.jpg"), picture(tmp_path / "b" / "img.jpg")
    out = tmp_path / "out"
    assert run("depth", str(a), str(b), "-o", str(out)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "would both write img_jpg.*" in err and "rename one" in err
    assert not out.exists()


def test_an_image_named_like_the_folders_sidecar_keeps_its_own(tmp_path, capsys):
    photo = picture(tmp_path / "metadata.jpg")
    out = tmp_path / "out"
    assert run("depth", str(photo), "-o", str(out), "--format", "gray") == 0, capsys.readouterr().err
    assert json.loads((out / "metadata_jpg.json").read_text())["image"] == "metadata_jpg.png"
    assert "frames" in json.loads((out / "metadata.json").read_text())  # the folder's, beside it


def test_an_image_named_twice_is_read_once(tmp_path, capsys):
    one = picture(tmp_path / "one.png")
    out = tmp_path / "out"
    assert run("depth", str(one), str(tmp_path / "*.png"), "-o", str(out), "--format", "gray") == 0
    assert "done: 1 image " in capsys.readouterr().err and (out / "one.png").exists()


@pytest.mark.parametrize("name", ["out.mp5", "out.xyz"])
def test_a_mistyped_extension_is_refused_naming_the_containers(tmp_path, capsys, name):
    src = write_video(tmp_path / "in.mp4", frames=2, size=(32, 24))
    assert run("transcode", str(src), "-o", str(tmp_path / name)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a video container" in err and ".mkv .mov .mp4" in err and "/" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]  # no folder of PNGs


def test_a_video_whose_name_looks_like_a_glob_is_a_video(tmp_path, capsys):
    src = write_video(tmp_path / "clip [1].mp4", frames=2, size=(32, 24))
    out = tmp_path / "depth.mkv"
    assert run("transcode", str(src), "-o", str(out)) == 0, capsys.readouterr().err
    assert "done: 2 frames" in capsys.readouterr().err


def test_a_trailing_slash_makes_a_folder_whatever_its_name(tmp_path, capsys):
    src = write_video(tmp_path / "in.mp4", frames=2, size=(32, 24))
    out = tmp_path / "out" / "base.exr"
    (tmp_path / "out").mkdir()
    assert run("transcode", str(src), "-o", f"{out}/", "--format", "exr") == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.exr")) == ["frame_000000.exr", "frame_000001.exr"]


def test_npz_sidecar_lists_only_the_arrays_the_files_hold(tmp_path, capsys):
    src = write_video(tmp_path / "in.mp4", frames=2, size=(32, 24))
    out = tmp_path / "npz"
    assert run("transcode", str(src), "-o", str(out), "--format", "npz") == 0, capsys.readouterr().err
    listed = [a.split(" ")[0] for a in json.loads((out / "metadata.json").read_text())["arrays"].split(", ")]
    with np.load(out / "frame_000000.npz") as npz:
        assert sorted(listed) == sorted(npz.files)
    assert "focal_source" not in listed  # the null stand-in resolves no focal


def sequence(folder: Path, numbers: list[int]) -> None:
    for n in numbers:
        picture(folder / f"frame_{n:04d}.png", 10 * n)


def test_a_printf_pattern_is_an_image_sequence_in_frame_order(tmp_path):
    sequence(tmp_path, [9, 10, 11, 2])
    picture(tmp_path / "frame_12.png")  # 2 digits: not %04d
    picture(tmp_path / "other_0001.png")
    found = printf_matches(str(tmp_path / "frame_%04d.png"))
    assert [p.name for p in found] == ["frame_0002.png", "frame_0009.png", "frame_0010.png", "frame_0011.png"]
    assert len(printf_matches(str(tmp_path / "frame_%d.png"))) == 5  # any digits


def test_a_printf_sequence_transcodes_at_the_given_rate(tmp_path, capsys, caplog):
    sequence(tmp_path / "seq", [1, 2, 3])
    out = tmp_path / "depth.mkv"
    pattern = str(tmp_path / "seq" / "frame_%04d.png")
    assert run("transcode", pattern, "-o", str(out), "--fps", "10") == 0, capsys.readouterr().err
    assert "frame rate" not in caplog.text  # given: nothing to warn about
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(stream)]
    assert times == pytest.approx([0.0, 0.1, 0.2])


def test_a_sequence_is_trimmed_like_a_video(tmp_path, capsys):
    sequence(tmp_path / "seq", list(range(1, 11)))  # 10 frames at 10 fps: 0.0 .. 0.9 s
    pattern = str(tmp_path / "seq" / "frame_%04d.png")
    out = tmp_path / "trim.mkv"
    assert run("transcode", pattern, "-o", str(out), "--fps", "10", "--start", "0.3", "--end", "0.6") == 0
    with av.open(str(out)) as container:
        times = [float(f.pts * f.time_base) for f in container.decode(video=0)]
    assert times == pytest.approx([0.0, 0.1, 0.2])  # frames 0.3, 0.4, 0.5 s, the output starting at 0
    out = tmp_path / "first.mkv"
    assert run("transcode", pattern, "-o", str(out), "--fps", "10", "--max-frames", "4") == 0
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4
    capsys.readouterr()
    assert run("transcode", pattern, "-o", str(tmp_path / "past.mkv"), "--fps", "10", "--start", "5") == 1
    err = capsys.readouterr().err
    assert "past the end" in err and "1.00 s long" in err, err


def test_an_image_sequence_is_stabilised_by_default_and_stills_are_not(tmp_path):
    sequence(tmp_path / "seq", [1, 2, 3])
    cfg = load_config(None, {"model": {"processor": "null"}})
    assert stabilize_mode(cfg, ImageSource([str(tmp_path / "seq")], fps=10), []) == "causal"
    assert stabilize_mode(cfg, ImageSource([str(tmp_path / "seq")]), []) == "off"  # `depth`: stills


def test_a_sequence_of_mixed_sizes_runs_through_the_stabiliser(tmp_path, capsys, checkpoint):
    for n, size in enumerate([(24, 16), (24, 16), (16, 24)]):  # a turned photo restarts it
        picture(tmp_path / "seq" / f"frame_{n:04d}.png", 40 * n, size)
    out = tmp_path / "depth.mkv"
    args = ["--checkpoint", str(checkpoint), "--input-size", "56x84", "--device", "cpu", "--format", "metric16"]
    assert main(["transcode", str(tmp_path / "seq"), "-o", str(out), "--fps", "5", *args]) == 0, capsys.readouterr().err
    assert json.loads(out.with_suffix(".json").read_text())["stabilize"]["mode"] == "causal"


def test_a_glob_without_fps_says_the_rate_it_assumes(tmp_path, capsys, caplog):
    sequence(tmp_path / "seq", [1, 2])
    out = tmp_path / "depth.mkv"
    with caplog.at_level(logging.WARNING):
        assert run("transcode", str(tmp_path / "seq" / "*.png"), "-o", str(out)) == 0, capsys.readouterr().err
    warned = [r.getMessage() for r in caplog.records if "frame rate" in r.getMessage()]
    assert len(warned) == 1 and "25 fps" in warned[0] and "--fps" in warned[0] and "\n" not in warned[0]
    with av.open(str(out)) as container:
        assert container.streams.video[0].average_rate == 25
    folder = tmp_path / "from_folder.mkv"  # a folder of frames is a sequence too
    assert run("transcode", str(tmp_path / "seq"), "-o", str(folder), "--fps", "5") == 0, capsys.readouterr().err
    with av.open(str(folder)) as container:
        assert container.streams.video[0].average_rate == 5
    assert ImageSource([str(tmp_path / "seq")], fps=29.97).rate == Fraction(2997, 100)


def test_fps_given_for_a_video_is_said_to_be_ignored(tmp_path, capsys, caplog):
    """--fps sets a camera's or an image sequence's rate; a video keeps its own times, and says so."""
    video = write_video(tmp_path / "in.mp4", frames=3, rate=10)
    out = tmp_path / "depth.mkv"
    with caplog.at_level(logging.WARNING):
        assert run("transcode", str(video), "-o", str(out), "--fps", "5") == 0, capsys.readouterr().err
    warned = [r.getMessage() for r in caplog.records if "--fps" in r.getMessage()]
    assert len(warned) == 1 and "ignored" in warned[0] and "in.mp4" in warned[0] and "\n" not in warned[0]
    with av.open(str(out)) as container:
        times = [float(f.pts * f.time_base) for f in container.decode(container.streams.video[0])]
    assert times == pytest.approx([0.0, 0.1, 0.2])  # the video's own rate, not 5 fps


def test_palette_transparency_is_read_without_pillows_warning(tmp_path):
    path = tmp_path / "p.png"
    image = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    image.save(path, transparency=bytes([0] * 10 + [255] * 246))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = exif_upright(path)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("suffix, hint", [(".gif", "streamer transcode"), (".webp", "separate images")])
def test_an_animation_is_refused_with_where_to_go(tmp_path, capsys, suffix, hint):
    frames = [Image.new("RGB", (16, 16), (60 * i, 0, 0)) for i in range(3)]
    anim = tmp_path / f"anim{suffix}"
    frames[0].save(anim, save_all=True, append_images=frames[1:], duration=100)
    out = tmp_path / "out"
    assert run("depth", str(anim), "-o", str(out)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "animation of 3 frames" in err and hint in err
    assert not out.exists()
    frames[0].save(tmp_path / "still.gif")  # one frame: a still like any other
    assert run("depth", str(tmp_path / "still.gif"), "-o", str(out)) == 0, capsys.readouterr().err


def test_null_depth_writes_a_sidecar_per_image(tmp_path, capsys):
    a, b = picture(tmp_path / "a.png"), picture(tmp_path / "b.png", size=(16, 24))
    out = tmp_path / "out"
    assert run("depth", str(a), str(b), "-o", str(out), "--format", "gray") == 0, capsys.readouterr().err
    sidecars = {p.name: json.loads(p.read_text()) for p in out.glob("[ab].json")}
    assert sorted(sidecars) == ["a.json", "b.json"] and sidecars["b.json"]["image"] == "b.png"
    assert all(s["format"] == "gray" and s["processor"] == "null" and "fx" in s for s in sidecars.values())


def test_photos_named_like_numbered_frames_are_not_removed_as_stale(tmp_path, capsys):
    """Frames exported by `ffmpeg -i clip frame_%06d.png` are photos with names to `depth`: a later
    call with --overwrite into the same folder keeps the earlier calls' results."""
    first, second = picture(tmp_path / "frame_000001.png"), picture(tmp_path / "frame_000002.png")
    out = tmp_path / "out"
    assert run("depth", str(first), "-o", str(out), "--overwrite") == 0, capsys.readouterr().err
    assert run("depth", str(second), "-o", str(out), "--overwrite") == 0, capsys.readouterr().err
    assert (out / "frame_000001.png").is_file() and (out / "frame_000001.json").is_file()
    assert (out / "frame_000002.png").is_file()


def test_batch_names_sequence_folders_after_inputs_with_dots(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    src = write_video(tmp_path / "in" / "clip.v2.mp4", frames=2, size=(32, 24))
    out = tmp_path / "out"
    assert run("batch", str(src.parent), "-o", str(out), "--format", "exr") == 0, capsys.readouterr().err
    assert sorted(p.name for p in (out / "clip.v2").glob("*.exr")) == ["frame_000000.exr", "frame_000001.exr"]
