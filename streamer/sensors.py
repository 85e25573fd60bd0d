"""Sensor widths of known cameras, for photos whose EXIF gives a focal length only in millimetres.

A focal length in mm becomes pixels only with the sensor's size: `f_px = f_mm / sensor_width_mm *
image_long_side_px`. Many compact cameras and drones write FocalLength but neither a 35 mm
equivalent nor FocalPlaneXResolution. Photogrammetry tools keep a table of sensor sizes for them;
this is OpenSfM's (streamer/data/sensor_data.json, origin and licence in sensor_data.LICENSE.txt),
looked up as OpenSfM does: "make model" in lower case, with the make left out of the model where
the model repeats it ("Canon" + "Canon EOS 5D" -> "canon eos 5d"). Makers that write a company
name ("NIKON CORPORATION" + "NIKON D700") are matched by the make's first word as well.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

TABLE = "sensor_data.json"


@functools.cache
def sensor_widths() -> dict[str, float]:
    """The table, keys in lower case with single spaces (read once, on the first photo that needs it)."""
    text = resources.files("streamer").joinpath("data", TABLE).read_text(encoding="utf-8")
    return {_words(k): float(v) for k, v in json.loads(text).items() if float(v) > 0}


def _words(text: str) -> str:
    return " ".join(text.lower().split())


def lookup_keys(make: str, model: str) -> list[str]:
    """The table keys a camera's EXIF Make and Model may be filed under, most specific first."""
    make, model = _words(make), _words(model)
    brand = make.split(" ")[0] if make else ""
    keys: list[str] = []
    for name in dict.fromkeys(n for n in (make, brand) if n):
        rest = model.removeprefix(name).strip()
        keys.append(f"{name} {rest}".strip())
    if model:
        keys.append(model)  # some makers put the brand in Model only
    return list(dict.fromkeys(keys))


def sensor_width_mm(make: str | None, model: str | None) -> tuple[float, str] | None:
    """(sensor width in mm, the key it was found under) for a camera, or None when it is not known."""
    if not model:
        return None
    table = sensor_widths()
    for key in lookup_keys(make or "", model):
        if key in table:
            return table[key], key
    return None
