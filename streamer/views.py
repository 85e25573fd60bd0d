"""What a picture-making sink asks for: view, colormap, display range, size and pixel layout.

Plain settings without torch, so sinks (which import no torch) can hold and change them: the
preview's keys and the web page switch the view while the run goes on, and the device-side
renderer (`streamer.processors.render`) reads them for every frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamer.effect_settings import EffectSettings
from streamer.errors import ConfigError

VIEW_FORMATS = ("gray", "color", "normal", "side-by-side", "keyed")
RANGE_MODES = ("auto", "fixed", "frame")
COLORMAPS = ("turbo", "inferno", "magma", "plasma", "viridis", "jet", "bone")
# rgb24: (H, W, 3); yuv420p: (H*3/2, W) planes, full range BT.709 (even sizes); yuv444p: (3, H, W)
PIXEL_FORMATS = ("rgb24", "yuv420p", "yuv444p")


def check_choice(kind: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{kind} {value!r} is unknown", hint=f"use one of {', '.join(allowed)}")
    return value


@dataclass
class PictureSettings:
    """One sink's picture. Mutable on purpose: live sinks change view/colormap/range mid-run."""

    view: str = "color"
    colormap: str = "turbo"
    range: str = "auto"  # auto (smoothed 2..98th percentiles) | fixed (near..far) | frame (min..max)
    near: float = 0.1
    far: float = 10.0
    fit: tuple[int, int] | None = None  # letterbox into (width, height), e.g. a virtual camera
    pixel_format: str = "rgb24"
    # the keyed view's band, background and depth of field (streamer/effect_settings.py)
    effects: EffectSettings = field(default_factory=EffectSettings)
    alpha: bool = False  # the sink can carry transparency: a transparent background gives RGBA
    legend: bool = False  # burn a colour bar with metre ticks into the picture (streamer/legend.py)

    def __post_init__(self) -> None:
        check_choice("view", self.view, VIEW_FORMATS)
        check_choice("colormap", self.colormap, COLORMAPS)
        check_choice("range mode", self.range, RANGE_MODES)
        check_choice("pixel format", self.pixel_format, PIXEL_FORMATS)
        if not 0 <= self.near < self.far:
            raise ConfigError(f"display range {self.near}..{self.far} m is empty", hint="need 0 <= near < far")

    def cycle(self, attribute: str, choices: tuple[str, ...]) -> None:
        """Step `view` or `colormap` to the next choice (preview keys)."""
        current = getattr(self, attribute)
        setattr(self, attribute, choices[(choices.index(current) + 1) % len(choices)])
