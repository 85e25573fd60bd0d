"""The sink protocol, and what every file-writing sink shares: output path checks and sidecars."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from streamer.errors import SinkError
from streamer.types import METRIC16_SCALE, Result, StreamInfo
from streamer.views import VIEW_FORMATS, PictureSettings

METRIC16_MAX_M = 65535 * METRIC16_SCALE
# what each output format reads from a result (see streamer/processors/outputs.py)
FORMAT_NEEDS = {
    **{fmt: "picture" for fmt in VIEW_FORMATS},
    "metric16": "depth_mm",
    "comfy-depth": "comfy_depth",
    "comfy-normal": "comfy_normal",
    "exr": "depth",
}


class Sink:
    """Consumes results in frame order on its own thread. `live` sinks may be skipped frames.

    `needs` names the arrays it reads from `result.maps`; `picture` says how its picture looks.
    `main_thread` sinks are fed by the thread that runs the pipeline (GUI windows).
    """

    name = "sink"
    live = False
    main_thread = False
    needs: frozenset[str] = frozenset()
    picture: PictureSettings | None = None
    idle_interval: float | None = None  # call idle() when no result came for this long

    def open(self, info: StreamInfo, stats) -> None:
        """Prepare the output; raise SinkError now rather than after the model has run."""

    def write(self, result: Result) -> None:
        raise NotImplementedError

    def idle(self) -> None:
        """Nothing new arrived for `idle_interval` seconds."""

    def close(self, complete: bool) -> None:
        """Finalise the output, always; `complete` is False after an error or interrupt."""


def format_needs(fmt: str) -> frozenset[str]:
    """The arrays a file output of `fmt` reads (npz takes every map)."""
    if fmt == "npz":
        return frozenset({"depth", "normal", "kappa", "confidence"})
    return frozenset({FORMAT_NEEDS[fmt]})


def format_picture(fmt: str, settings: PictureSettings | None) -> PictureSettings | None:
    """The picture settings a file output uses: its view is the format itself."""
    if fmt not in VIEW_FORMATS:
        return None
    settings = settings or PictureSettings()
    return replace(settings, view=fmt)


def check_output(path: Path, overwrite: bool, inputs: list[str | Path] = ()) -> None:
    """Refuse outputs that would destroy data or cannot be written, before any work is done."""
    path = Path(path)
    for item in inputs:
        src = Path(item)
        if src.exists() and (src.resolve() == path.resolve() or (path.exists() and os.path.samefile(src, path))):
            raise SinkError(f"output {path} is the input file", hint="choose another output name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise SinkError(f"output directory {parent} does not exist", hint="create it first or choose another -o")
    check_writable(parent)
    if path.exists() and not overwrite:
        raise SinkError(f"output {path} already exists", hint="pass --overwrite to replace it")


def check_writable(directory: Path) -> None:
    """An existing output directory must be a directory this process may write to."""
    if not directory.is_dir():
        raise SinkError(f"{directory} is not a directory", hint="choose another -o")
    if not os.access(directory, os.W_OK):
        raise SinkError(f"output directory {directory} is not writable", hint="choose a directory you can write to")


def prepare_directory(directory: Path) -> None:
    """Create the output folder (its parent must exist) and check it is writable, before the model runs."""
    if directory.exists() and not directory.is_dir():
        raise SinkError(f"{directory} exists and is not a directory", hint="choose another -o")
    if not directory.exists() and not directory.parent.is_dir():
        raise SinkError(
            f"output directory {directory.parent} does not exist", hint="create it first or choose another -o"
        )
    try:
        directory.mkdir(exist_ok=True)
    except OSError as exc:
        raise SinkError(f"cannot create {directory}: {exc.strerror}", hint="choose a writable -o") from exc
    check_writable(directory)


def partial_path(path: Path) -> Path:
    """Where an output lives while it is written, and stays if the run does not finish."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def sidecar(meta: dict, extra: dict, stats=None) -> dict:
    """What a user needs to turn pixel values back into metres, and where they came from.

    fx/fy are the focal lengths the metres were computed with (source size) and `focal_source` says
    whether the user gave them, the file's EXIF or metadata did, or they were assumed (then metres are
    approximate; `focal_note` says why). `intrinsics` is (fx, fy, cx, cy) at the output size.
    `stabilize` holds the stabiliser's mode and parameters; given the run's `stats` (at close),
    it also lists the scene cuts found, each with its frame index and time in seconds.
    """
    keep = (
        "fx",
        "fy",
        "focal_source",
        "focal_note",
        "intrinsics",
        "backbone",
        "checkpoint",
        "input_size",
        "runtime",
        "precision",
        "focal_mode",
        "processor",
        "stabilize",
        "scale",
        "scale_source",
    )
    out = {**{k: meta[k] for k in keep if k in meta}, **extra}
    if stats is not None and getattr(stats, "detects_cuts", False) and "stabilize" in out:
        out["stabilize"] = {**out["stabilize"], "scene_cuts": stats.cut_list()}
    return out


class ImageFocals:
    """Each named frame's focal length, for a sequence's sidecar: its top-level fx/fy are the last frame's,
    which is not the whole truth for a folder of photos from several cameras (or some without EXIF)."""

    def __init__(self) -> None:
        self.by_name: dict[str, dict] = {}
        self.distinct: set[tuple] = set()

    def note(self, result: Result) -> None:
        if not result.frame.name or "fx" not in result.meta:
            return
        focal = {k: result.meta[k] for k in ("fx", "fy", "focal_source") if k in result.meta}
        self.by_name[result.frame.name] = focal
        self.distinct.add(tuple(focal.values()))

    def extra(self) -> dict:
        """{"focal_per_image": {name: {fx, fy, focal_source}}} when the images differ, else nothing."""
        return {"focal_per_image": self.by_name} if len(self.distinct) > 1 else {}


class ScaleLog:
    """Where the scale factor on the metres changed during the run (a click on the page or in the
    window calibrates mid-run): a sidecar's one `scale` cannot say which frames were made with which."""

    def __init__(self) -> None:
        self.changes: list[dict] = []

    def note(self, result: Result) -> None:
        if "scale" not in result.meta:
            return
        now = {"scale": result.meta["scale"], "scale_source": result.meta.get("scale_source")}
        if not self.changes or {k: self.changes[-1][k] for k in now} != now:
            self.changes.append({"from_frame": result.frame.index, **now})

    def extra(self) -> dict:
        """{"scale_changes": [{from_frame, scale, scale_source}, ...]} when the factor changed, else nothing."""
        return {"scale_changes": self.changes} if len(self.changes) > 1 else {}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
