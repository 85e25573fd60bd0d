"""The sink protocol, and what every file-writing sink shares: output path checks and sidecars."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from streamer.errors import SinkError
from streamer.processors.render import Renderer
from streamer.types import Result, StreamInfo

METRIC16_SCALE = 0.001  # metres per unit: uint16 millimetres
METRIC16_MAX_M = 65535 * METRIC16_SCALE


class Sink:
    """Consumes results in frame order on its own thread. `live` sinks may be skipped frames."""

    name = "sink"
    live = False
    idle_interval: float | None = None  # call idle() when no result came for this long

    def open(self, info: StreamInfo, stats) -> None:
        """Prepare the output; raise SinkError now rather than after the model has run."""

    def write(self, result: Result) -> None:
        raise NotImplementedError

    def idle(self) -> None:
        """Nothing new arrived for `idle_interval` seconds."""

    def close(self, complete: bool) -> None:
        """Finalise the output, always; `complete` is False after an error or interrupt."""


def render_picture(fmt: str, renderer: Renderer, result: Result) -> np.ndarray:
    """An 8-bit RGB picture for the display formats (gray, color, normal, side-by-side, comfy-*)."""
    if fmt in ("comfy-depth", "comfy-normal"):
        return result.maps[fmt.replace("-", "_")]
    return renderer(result.maps, result.frame.image)


def metric16(depth: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres (clipped at 65.535 m)."""
    return np.clip(np.rint(depth / METRIC16_SCALE), 0, 65535).astype(np.uint16)


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
    if not parent.is_dir():
        raise SinkError(f"{parent} is not a directory", hint="choose another -o")
    if not os.access(parent, os.W_OK):
        raise SinkError(f"output directory {parent} is not writable", hint="choose a directory you can write to")
    if path.exists() and not overwrite:
        raise SinkError(f"output {path} already exists", hint="pass --overwrite to replace it")


def partial_path(path: Path) -> Path:
    """Where an output lives while it is written, and stays if the run does not finish."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def sidecar(meta: dict, extra: dict) -> dict:
    """What a user needs to turn pixel values back into metres, and where they came from."""
    keep = ("fx", "fy", "backbone", "checkpoint", "input_size", "precision", "focal_mode", "processor")
    return {**{k: meta[k] for k in keep if k in meta}, **extra}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
