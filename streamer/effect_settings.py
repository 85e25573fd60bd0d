"""What the `keyed` view does with the metres: the distance band kept, what replaces the rest, and the
depth of field. Plain values without torch, so sinks (which import no torch) can hold and change them.

Frozen on purpose: a live change (page, keys) swaps the whole object on the sink's picture settings,
so the renderer reads one consistent set per batch, never a band half-changed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from streamer.errors import ConfigError

BACKGROUNDS = ("blur", "color", "image", "transparent", "none")
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


@dataclass(frozen=True)
class EffectSettings:
    """near..far: metres kept; `background`: blur | color:#RRGGBB | image:PATH | transparent | none
    (keep all: depth of field only); `focus` (metres, None = no depth of field) and `aperture`
    (f-number) with `sensor_width` (mm, the look of a camera of that sensor at the same field of view)
    set the blur's circle of confusion; `hysteresis` (metres) keeps the key's edge from flickering."""

    near: float = 0.0
    far: float = 1.5
    background: str = "blur"
    hysteresis: float = 0.05
    focus: float | None = None
    aperture: float = 2.8
    sensor_width: float = 36.0

    def __post_init__(self) -> None:
        if not (0 <= self.near < self.far):
            raise ConfigError(
                f"key band {self.near}..{self.far} m is empty", hint="need 0 <= near < far, e.g. --keep 0.4:1.8"
            )
        parse_background(self.background)
        if self.focus is not None and not (0 < self.focus < math.inf):
            raise ConfigError(f"--focus {self.focus} must be a distance in metres above 0", hint="e.g. --focus 1.2")
        if not (0 < self.aperture < math.inf and 0 < self.sensor_width < math.inf and self.hysteresis >= 0):
            raise ConfigError(
                f"aperture {self.aperture}, sensor width {self.sensor_width} mm, hysteresis {self.hysteresis} m "
                "must be positive",
                hint="e.g. --aperture 2.8",
            )

    @property
    def background_kind(self) -> str:
        return parse_background(self.background)[0]


LIVE_BACKGROUNDS = ("blur", "color:#00B140", "transparent", "none")  # what the preview's b key steps through


def change(effects: EffectSettings, changes: dict[str, str]) -> EffectSettings:
    """A live change from the page or keys: `keep` (NEAR:FAR or FAR), `background`, `focus` (metres,
    or '' / 'off' for none), `aperture` -> the new settings, all valid or a ConfigError. Pictures
    from files (`image:`) stay a command-line choice: a page must not name files on the server."""
    fields: dict = {}
    for key, value in changes.items():
        value = str(value).strip()
        if key == "keep":
            fields["near"], fields["far"] = parse_band(value)
        elif key == "background":
            if parse_background(value)[0] == "image":
                raise ConfigError("a background picture is set on the command line", hint="--background image:PATH")
            fields["background"] = value
        elif key in ("focus", "aperture"):
            try:
                fields[key] = None if key == "focus" and value in ("", "off") else float(value)
            except ValueError:
                raise ConfigError(
                    f"{key} {value!r} is not a number", hint="metres for focus, an f-number for aperture"
                ) from None
        else:
            raise ConfigError(f"effect setting {key!r} is unknown", hint="use keep, background, focus or aperture")
    return replace(effects, **fields)


def parse_background(spec: str) -> tuple[str, tuple[int, int, int] | Path | None]:
    """'blur' | 'color:#RRGGBB' | 'image:PATH' | 'transparent' | 'none' -> (kind, colour or path)."""
    kind, _, arg = spec.partition(":")
    if kind not in BACKGROUNDS:
        raise ConfigError(
            f"background {spec!r} is unknown", hint="use blur, color:#RRGGBB, image:PATH, transparent or none"
        )
    if kind == "color":
        match = _HEX.match(arg)
        if not match:
            raise ConfigError(f"background {spec!r} is not a colour", hint="write it as color:#00B140")
        value = int(match.group(1), 16)
        return kind, (value >> 16, (value >> 8) & 255, value & 255)
    if kind == "image":
        if not arg:
            raise ConfigError("background image: names no file", hint="e.g. --background image:beach.jpg")
        return kind, Path(arg)
    return kind, None


def parse_band(text: str) -> tuple[float, float]:
    """'0.4:1.8' -> (0.4, 1.8) metres; '1.5' (keep within) -> (0.0, 1.5)."""
    near, sep, far = str(text).partition(":")
    try:
        band = (float(near), float(far)) if sep else (0.0, float(near))
    except ValueError:
        raise ConfigError(f"key band {text!r} is not metres", hint="e.g. --keep 0.4:1.8 or --keep-within 1.5") from None
    if not (0 <= band[0] < band[1]) or not math.isfinite(band[1]):
        raise ConfigError(f"key band {text!r} is empty", hint="need 0 <= near < far, e.g. --keep 0.4:1.8")
    return band
