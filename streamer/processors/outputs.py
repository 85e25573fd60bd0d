"""What the sinks asked for, made on the device once per batch: pictures, millimetres, maps.

Each sink declares `needs`, a set of these names, and for a picture its `picture` settings:
  picture     8-bit picture in the sink's view and pixel format (made by a Renderer)
  picture_range  its display range (near, far metres; NaN where the view shows none: normals,
              keyed, a ControlNet picture), for a legend
  depth_mm    uint16 millimetres (metric16)
  depth, normal, confidence, kappa   float32 maps in metres / unit vectors
  image       the input frame at the output size (RGB uint8)
  comfy_depth, comfy_normal          the ComfyUI node's pictures
The stage is asked only for the maps these need, at the output size; only what a sink reads
is downloaded, and each sink gets just its own arrays.

Pictures follow live settings (a person switches the view mid-run), read once per batch: the
engine takes `snapshot()` before it asks the stage for maps and renders that batch with the same
snapshot, so the maps asked for are the maps the pictures need; a change applies to the next batch.
"""

from __future__ import annotations

import numpy as np
import torch

from streamer.processors.render import Renderer, resize_u8
from streamer.types import METRIC16_SCALE
from streamer.views import PictureSnapshot

Looks = tuple[PictureSnapshot, ...]  # one batch's settings, one per renderer: frozen, compared by value

SIZE_KEYS = ("depth", "normal", "confidence", "kappa", "picture")  # maps at the output size
DEFAULT_WANTS = frozenset({"depth"})  # with no sink (model-only runs) the stage still yields depth


def to_millimetres(depth: torch.Tensor) -> torch.Tensor:
    """Metres -> uint16 millimetres (clipped at 65.535 m), rounding half to even as numpy's rint."""
    return torch.round(depth / METRIC16_SCALE).clamp_(0, 65535).to(torch.int32).to(torch.uint16)


class Outputs:
    """Routes from the stage's maps to each sink's arrays; one Renderer per picture settings."""

    def __init__(self, sinks: list, calibration=None) -> None:
        self.calibration = calibration  # streamer.calibration.Calibration: a scale on every metre, or None
        self.renderers: list[Renderer] = []
        self.routes: list[dict[str, str]] = []  # per sink: its name for an array -> the download key
        renderer_of: dict[int, int] = {}
        for sink in sinks:
            route: dict[str, str] = {}
            for need in sorted(getattr(sink, "needs", ())):
                if need in ("picture", "picture_range"):
                    if id(sink.picture) not in renderer_of:
                        renderer_of[id(sink.picture)] = len(self.renderers)
                        self.renderers.append(Renderer(sink.picture))
                    kind = "picture" if need == "picture" else "range"
                    route[need] = f"{kind}:{renderer_of[id(sink.picture)]}"
                else:
                    route[need] = need
            self.routes.append(route)
        keys = {key for route in self.routes for key in route.values()}
        self.raw = {key for key in keys if not key.startswith(("picture:", "range:"))}
        self.ranges = {key for key in keys if key.startswith("range:")}

    def snapshot(self) -> Looks:
        """Every renderer's settings as they are now: taken once per batch."""
        return tuple(renderer.snapshot() for renderer in self.renderers)

    def stage_wants(self, looks: Looks | None = None) -> set[str]:
        """The maps the stage must make for a batch rendered with `looks` (the settings now if None)."""
        looks = self.snapshot() if looks is None else looks
        wants = {key for key in self.raw if key != "depth_mm"} | ({"depth"} if "depth_mm" in self.raw else set())
        for look in looks:
            wants |= Renderer.maps_needed(look)
        return wants or set(DEFAULT_WANTS)

    @torch.inference_mode()
    def __call__(
        self,
        maps: dict[str, torch.Tensor],
        images: torch.Tensor,
        looks: Looks | None = None,
        meta: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """Stage maps + the uploaded frames -> the tensors to download, keyed as in `routes`.

        Pictures are made with `looks`, the snapshot the maps were asked for with (callers that
        change no settings meanwhile may leave it out). `meta` (the stage's, the results' own)
        gives the keyed view its focal length in pixels of the output, and hears the scale factor
        the metres were multiplied by."""
        looks = self.snapshot() if looks is None else looks
        maps = dict(maps)
        if self.calibration is not None and "depth" in maps:
            maps["depth"], factor = self.calibration.scaled(maps["depth"])
            if meta is not None:
                meta.update(factor)  # the sidecars' `scale` and `scale_source`: what these metres were made with
        focal = output_focal(meta or {}, images, maps)
        for renderer in self.renderers:
            renderer.focal_px = focal
        if "image" in self.stage_wants(looks):
            size_key = next(k for k in SIZE_KEYS if k in maps)
            maps["image"] = resize_u8(images, tuple(maps[size_key].shape[1:3]))
        out = {}
        for i, (renderer, look) in enumerate(zip(self.renderers, looks, strict=True)):
            renderer.last_range = None
            out[f"picture:{i}"] = picture = renderer(maps, look)
            if f"range:{i}" in self.ranges:
                no_range = torch.full((picture.shape[0], 2), float("nan"), device=picture.device)
                out[f"range:{i}"] = renderer.last_range if renderer.last_range is not None else no_range
        for key in self.raw:
            out[key] = to_millimetres(maps["depth"]) if key == "depth_mm" else maps[key]
        return out

    def split(self, arrays: dict[str, np.ndarray], index: int) -> list[dict[str, np.ndarray]]:
        """Frame `index` of a downloaded batch -> one dict per sink, in the sinks' order."""
        return [{need: arrays[key][index] for need, key in route.items()} for route in self.routes]


def output_focal(meta: dict, images: torch.Tensor, maps: dict[str, torch.Tensor]) -> float | None:
    """fx in pixels of the output: the stage's intrinsics at the output size, else its fx at the source's."""
    if "intrinsics" in meta:
        return float(meta["intrinsics"][0])
    size_key = next((k for k in SIZE_KEYS if k in maps), None)
    if "fx" not in meta or size_key is None:
        return None
    return float(meta["fx"]) * maps[size_key].shape[2] / images.shape[2]
