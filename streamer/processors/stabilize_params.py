"""Settings of the depth stabiliser (streamer/processors/stabilize.py) as plain data.

Kept apart from the torch code so the typed config can check `model.stabilize_params` without
loading torch, as it checks backbones against models/metric3d/variants.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from streamer.errors import ConfigError

MODES = ("off", "causal", "lookahead")


@dataclass(frozen=True)
class StabilizeParams:
    """Tuning of the stabiliser. The defaults suit 24-60 fps video; `as_dict` goes in sidecars."""

    lookahead: int = 3  # future frames that mode "lookahead" uses (and its latency in frames)
    scale_memory: float = 10.0  # frames over which the global scale is averaged
    pixel_memory: float = 10.0  # frames over which a static, confident pixel is averaged
    confidence_floor: float = 0.25  # least weight of an unsure pixel (it averages over memory / floor frames)
    image_change: float = 0.04  # relative brightness change where a pixel starts to count as moving (fully at 3x)
    depth_change: float = 0.06  # relative depth change where a pixel starts to count as moving (fully at 2x)
    work_scale: int = 8  # downscale factor for the global alignment and the cut detector
    motion_scale: int = 4  # block size of the image-change map (at most work_scale's effective factor)
    min_work_side: int = 32  # ... but the downscaled frame keeps at least this short side
    cut_ratio: float = 3.0  # a cut changes the content this many times more than recent frames did
    cut_min_score: float = 0.08  # ... and at least this much (mean abs HSV difference, 0..1)
    cut_window: int = 8  # recent frames whose scores are averaged
    min_scene_len: int = 6  # frames in a scene before another cut can start (also from the start)

    def __post_init__(self) -> None:
        counts = (self.lookahead, self.work_scale, self.motion_scale, self.min_work_side, self.cut_window)
        if min(counts) < 1 or min(self.scale_memory, self.pixel_memory) < 1 or self.min_scene_len < 0:
            raise ConfigError("stabilizer: frame counts and scales must be >= 1", hint=f"got {self}")
        if not 0 < self.confidence_floor <= 1:
            raise ConfigError("stabilizer: confidence_floor must be in (0, 1]", hint=f"got {self.confidence_floor}")
        if min(self.image_change, self.depth_change, self.cut_ratio, self.cut_min_score) <= 0:
            raise ConfigError("stabilizer: change thresholds must be > 0", hint=f"got {self}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def param_names() -> list[str]:
    return [f.name for f in fields(StabilizeParams)]


def parse_params(values: dict[str, Any]) -> StabilizeParams:
    """Overrides from a config (`model.stabilize_params`) -> checked parameters.

    Names are checked against the fields, and counts must be whole numbers: a YAML `3.0` for
    `lookahead` would otherwise slice lists with a float deep inside the stabiliser.
    """
    kinds = {f.name: f.type for f in fields(StabilizeParams)}
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise ConfigError(f"stabilizer parameter {', '.join(unknown)} unknown", hint=f"use {', '.join(kinds)}")
    checked: dict[str, Any] = {}
    for name, value in values.items():
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not isinstance(value, int | float) or (kinds[name] == "int" and not whole):
            kind = "whole number" if kinds[name] == "int" else "number"
            raise ConfigError(f"stabilizer parameter {name} must be a {kind}", hint=f"got {value!r}")
        checked[name] = int(value) if kinds[name] == "int" else float(value)
    return StabilizeParams(**checked)
