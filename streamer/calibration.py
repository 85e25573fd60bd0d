"""A scale factor on every metre the run produces: a person's correction of the model's scale.

Metric depth models get the scale wrong when the focal length is wrong or the scene is unlike their
training ("the wall is 5 m away, it says 16 m"). One known distance fixes it: the factor multiplies
the depth once, on the device, before any output is made, so pictures, /depth.png, recordings and
point clouds all agree. It comes from `--scale`, from `--known-distance X,Y=D` (resolved on the first
frame), from a click on the page ("this point is D metres away"), or from the last click saved for
the same camera. Sidecars record it as `scale` and `scale_source`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from pathlib import Path

from streamer.errors import ConfigError

log = logging.getLogger(__name__)
ASSUMED_HFOV = 70.0  # degrees: measuring in 3D when the stage said nothing of the focal length
_KNOWN = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*=\s*([0-9.]+)\s*$")


def parse_known_distance(text: str) -> tuple[int, int, float]:
    """'640,360=2.5' -> (x, y, metres): the pixel (of the output picture) and its true distance."""
    match = _KNOWN.match(text or "")
    if not match or float(match.group(3)) <= 0:
        raise ConfigError(f"--known-distance {text!r} is not X,Y=METRES", hint="e.g. --known-distance 640,360=2.5")
    return int(match.group(1)), int(match.group(2)), float(match.group(3))


def store_path() -> Path:
    """Where the per-camera factors are kept: the user's config folder (APPDATA on Windows)."""
    base = os.environ.get("STREAMER_CONFIG_DIR") or os.environ.get("XDG_CONFIG_HOME") or os.environ.get("APPDATA")
    return Path(base or Path.home() / ".config") / "streamer" / "calibration.json"


class Calibration:
    """The run's scale factor; `apply` runs on the model thread, `calibrate` on a sink's (page clicks)."""

    def __init__(
        self,
        scale: float = 1.0,
        source: str = "none",
        known: tuple[int, int, float] | None = None,
        camera: str | None = None,
        store: Path | None = None,
    ) -> None:
        if not scale > 0:
            raise ConfigError(f"--scale {scale} must be above 0", hint="e.g. --scale 0.93")
        self.scale = float(scale)
        self.source = source  # none | given | known-distance | click | saved
        self.known = known
        self.camera = camera  # the key a click is saved under (live cameras only)
        self.store = store
        self._lock = threading.Lock()

    @classmethod
    def from_options(
        cls, scale: float | None, known_distance: str | None, camera: str | None, store: Path | None = None
    ) -> Calibration:
        """--scale wins, then --known-distance, then the factor saved for this camera, else 1."""
        if scale is not None:
            return cls(scale, "given", camera=camera, store=store)
        if known_distance:
            return cls(known=parse_known_distance(known_distance), source="known-distance", camera=camera, store=store)
        saved = load_saved(store, camera) if camera is not None and store is not None else None
        if saved is not None:
            return cls(saved, "saved", camera=camera, store=store)
        return cls(camera=camera, store=store)

    def apply(self, depth):
        """Metres (a tensor, (N, H, W)) times the factor; resolves --known-distance on the first frame."""
        return self.scaled(depth)[0]

    def scaled(self, depth) -> tuple:
        """(metres times the factor, the factor as sidecars record it) from one read of it: a click
        on another thread between two reads would record a factor these metres were not made with."""
        if self.known is not None:
            self.resolve_known(depth)
        with self._lock:
            scale, source = self.scale, self.source
        return (depth if scale == 1.0 else depth * scale), {"scale": round(scale, 6), "scale_source": source}

    def resolve_known(self, depth) -> None:
        """--known-distance: the factor that puts the pixel at its true distance (one read of the
        device's metres: the first batch only)."""
        x, y, metres = self.known
        n, h, w = depth.shape
        if not (0 <= x < w and 0 <= y < h):
            raise ConfigError(
                f"--known-distance pixel {x},{y} lies outside the {w}x{h} output", hint="give a pixel inside it"
            )
        raw = float(depth[0, y, x])
        if not raw > 0:
            raise ConfigError(f"--known-distance pixel {x},{y} has no depth", hint="pick a pixel on a surface")
        with self._lock:
            self.scale, self.known = metres / raw, None
        log.info("scale %.4f from --known-distance (%.3f m measured as %.3f m)", metres / raw, metres, raw)

    def calibrate(self, shown: float, metres: float) -> float:
        """A point shown at `shown` metres (already scaled) truly lies at `metres`: the new factor."""
        if not (shown > 0 and metres > 0):
            raise ValueError("both distances must be above 0")
        with self._lock:
            self.scale *= metres / shown
            self.source = "click"
            self.known = None
            if self.camera is not None and self.store is not None:
                save(self.store, self.camera, self.scale)
        return self.scale

    def describe(self) -> dict:
        with self._lock:
            return {"scale": round(self.scale, 6), "scale_source": self.source}


def load_saved(store: Path, camera: str) -> float | None:
    try:
        entry = json.loads(store.read_text()).get(camera)
    except (OSError, ValueError):
        return None
    scale = entry.get("scale") if isinstance(entry, dict) else None
    return float(scale) if isinstance(scale, (int, float)) and scale > 0 else None


def save(store: Path, camera: str, scale: float) -> None:
    """Keep the factor for this camera; a failed write is logged, never the end of a live run."""
    try:
        data = json.loads(store.read_text()) if store.exists() else {}
        data[camera] = {"scale": scale}
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(store.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, store)
    except (OSError, ValueError) as exc:
        log.warning("could not save the scale for camera %s in %s: %s", camera, store, exc)


def intrinsics(meta: dict, width: int, height: int, source_width: int) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) at the depth's size: the stage's, else its fx at the source's size, else assumed."""
    if "intrinsics" in meta:
        fx, fy, cx, cy = (float(v) for v in meta["intrinsics"])
        return fx, fy, cx, cy
    if "fx" in meta and source_width:
        fx = float(meta["fx"]) * width / source_width
        fy = float(meta.get("fy", meta["fx"])) * width / source_width
    else:
        fx = fy = width / (2.0 * math.tan(math.radians(ASSUMED_HFOV) / 2.0))
    return fx, fy, width / 2.0, height / 2.0


def point_3d(x: int, y: int, metres: float, k: tuple[float, float, float, float]) -> list[float]:
    """Pixel x, y (its centre) at `metres` -> camera coordinates (x right, y down, z forward)."""
    fx, fy, cx, cy = k
    return [(x + 0.5 - cx) * metres / fx, (y + 0.5 - cy) * metres / fy, metres]
