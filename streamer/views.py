"""What a picture-making sink asks for: view, colormap, display range, size and pixel layout.

Plain settings without torch, so sinks (which import no torch) can hold and change them: the
preview's keys, the web page and the Python API switch the view while the run goes on. The
engine reads them once per batch as a frozen `PictureSnapshot` (`PictureSettings.snapshot()`):
the maps the model is asked for and the pictures made from them follow the same snapshot, so a
change applies to the next batch, never half-way through one. A setting added to
`PictureSettings` (a field with a default) joins the snapshot by itself.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields, make_dataclass

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


def side_by_side(picture, depth) -> bool:
    """Whether a frame's picture (H, W', C) shows the input beside its depth (H, W): read off the
    frame itself, as a view picked now applies from the next batch on (the newest frame may be older)."""
    return picture is not None and depth is not None and picture.shape[1] == 2 * depth.shape[1]


def check_settings(s) -> None:
    """The rules every picture setting obeys, for live settings and snapshots alike."""
    check_choice("view", s.view, VIEW_FORMATS)
    check_choice("colormap", s.colormap, COLORMAPS)
    check_choice("range mode", s.range, RANGE_MODES)
    check_choice("pixel format", s.pixel_format, PIXEL_FORMATS)
    if not 0 <= s.near < s.far:
        raise ConfigError(f"display range {s.near}..{s.far} m is empty", hint="need 0 <= near < far")


@dataclass
class PictureSettings:
    """One sink's picture, live: people change view/colormap/range mid-run (`update`, `cycle`).

    Changes and `snapshot()` hold one lock, so a snapshot never sees half of a change."""

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
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_settings(self)

    def snapshot(self) -> PictureSnapshot:
        """The settings as they are now, frozen: what one batch is made with."""
        with self._lock:
            return PictureSnapshot(**{name: getattr(self, name) for name in SETTING_NAMES})

    def update(self, **changes) -> None:
        """Change several settings at once, all valid or none applied (ConfigError)."""
        unknown = sorted(set(changes) - set(SETTING_NAMES))
        if unknown:
            raise ConfigError(f"unknown picture settings {unknown}", hint=f"use {', '.join(SETTING_NAMES)}")
        with self._lock:
            current = {name: getattr(self, name) for name in SETTING_NAMES}
            check_settings(PictureSnapshot(**{**current, **changes}))
            for name, value in changes.items():
                setattr(self, name, value)

    def cycle(self, attribute: str, choices: tuple[str, ...]) -> None:
        """Step `view` or `colormap` to the next choice (preview keys)."""
        with self._lock:
            current = getattr(self, attribute)
            setattr(self, attribute, choices[(choices.index(current) + 1) % len(choices)])


SETTING_NAMES = tuple(f.name for f in fields(PictureSettings) if not f.name.startswith("_"))
PictureSnapshot = make_dataclass(
    "PictureSnapshot",
    [
        (f.name, f.type, field(default=f.default, default_factory=f.default_factory))
        for f in fields(PictureSettings)
        if f.name in SETTING_NAMES
    ],
    frozen=True,
    namespace={"__doc__": "One batch's picture settings: frozen, hashable, compared by value."},
)
