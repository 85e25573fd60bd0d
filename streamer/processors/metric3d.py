"""Metric3D's official recipe around the network, as batched tensor ops on the model's device.

Letterbox into the canonical input (keep aspect, cv2-exact bilinear resize, pad with the mean
colour), normalise, forward, un-pad, resize back, and turn canonical depth (a 1000 px focal
camera) into metres: depth * focal * resize_scale / 1000, clamped to [0, 300] m.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from streamer.errors import ConfigError
from streamer.focal import Focal, FocalResolver, intrinsics_at
from streamer.models.metric3d import Metric3D
from streamer.processors.comfy import comfy_maps
from streamer.processors.resize import LinearResizeU8
from streamer.runtimes import Runtime
from streamer.runtimes.torch import TorchRuntime

CANONICAL_INPUT = (616, 1064)
CANONICAL_FOCAL = 1000.0
MAX_METRIC_DEPTH = 300.0
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
PAD_RGB = (124, 116, 104)  # the official pad colour is MEAN; cv2 rounds it on uint8 images
FOCAL_MODES = ("fx", "mean")
ALL_MAPS = ("depth", "confidence", "normal", "kappa")  # hubconf uses fx only; the official test script (fx + fy) / 2


def check_input_size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = size
    if h <= 0 or w <= 0 or h % 28 or w % 28:
        raise ConfigError(
            f"input_size {h}x{w} is not a multiple of 28 in both sides",
            hint="use e.g. 616x1064 (official), 308x532 or 224x392",
        )
    return h, w


@dataclass(frozen=True)
class Letterbox:
    """Where a source image of `src_hw` sits inside the canonical input."""

    src_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    scale: float

    @classmethod
    def fit(cls, src_hw: tuple[int, int], input_hw: tuple[int, int]) -> Letterbox:
        h, w = src_hw
        scale = min(input_hw[0] / h, input_hw[1] / w)
        rh, rw = int(h * scale), int(w * scale)
        top, left = (input_hw[0] - rh) // 2, (input_hw[1] - rw) // 2
        return cls(src_hw, (rh, rw), (top, input_hw[0] - rh - top, left, input_hw[1] - rw - left), scale)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        top, _, left, _ = self.pad
        return x[..., top : top + self.resized_hw[0], left : left + self.resized_hw[1]]


class Metric3DProcessor:
    """Frames (N, H, W, 3) uint8 on the device -> metric depth, normals, kappa, confidence.

    `model` is a runtime (streamer/runtimes) or a placed Metric3D module, run by torch as it is.
    """

    def __init__(
        self,
        model: Metric3D | Runtime,
        input_size: tuple[int, int] = CANONICAL_INPUT,
        focal_mode: str = "fx",
    ) -> None:
        if focal_mode not in FOCAL_MODES:
            raise ConfigError(f"focal_mode {focal_mode!r} is unknown", hint="use 'fx' or 'mean'")
        self.runtime = TorchRuntime.around(model) if isinstance(model, torch.nn.Module) else model
        self.input_size = check_input_size(input_size)
        self.focal_mode = focal_mode
        self.device, self.dtype = self.runtime.device, self.runtime.input_dtype
        self._mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
        self._resizers: dict[tuple[int, int], tuple[Letterbox, LinearResizeU8]] = {}

    def letterbox(self, src_hw: tuple[int, int]) -> tuple[Letterbox, LinearResizeU8]:
        if src_hw not in self._resizers:
            box = Letterbox.fit(src_hw, self.input_size)
            self._resizers[src_hw] = (box, LinearResizeU8(src_hw, box.resized_hw, self.device))
        return self._resizers[src_hw]

    def canvas(self, images: torch.Tensor) -> tuple[torch.Tensor, Letterbox]:
        """(N, H, W, 3) uint8 -> the padded uint8 model input (N, 3, IH, IW), as the network sees it."""
        box, resize = self.letterbox((images.shape[1], images.shape[2]))
        resized = resize(images).permute(0, 3, 1, 2)
        top, bottom, left, right = box.pad
        canvas = torch.empty((images.shape[0], 3, *self.input_size), dtype=torch.uint8, device=images.device)
        for c, value in enumerate(PAD_RGB):
            canvas[:, c] = value
        canvas[:, :, top : top + box.resized_hw[0], left : left + box.resized_hw[1]] = resized
        return canvas, box

    def normalize(self, canvas: torch.Tensor) -> torch.Tensor:
        return ((canvas.float() - self._mean) / self._std).to(self.dtype)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor, all_iterations: bool = False):
        """Raw network outputs on the padded canonical canvas, and the letterbox that made it."""
        canvas, box = self.canvas(images)
        return self.runtime(self.normalize(canvas), all_iterations=all_iterations), box

    def metric_scale(self, fx: float, fy: float, box: Letterbox) -> float:
        focal = fx if self.focal_mode == "fx" else (fx + fy) / 2
        return focal * box.scale / CANONICAL_FOCAL

    def __call__(
        self,
        images: torch.Tensor,
        fx: float,
        fy: float,
        out_hw: tuple[int, int] | None = None,
        wants: set[str] | frozenset[str] = ALL_MAPS,
    ) -> dict[str, torch.Tensor]:
        """-> depth (N,h,w) m, normal (N,h,w,3), kappa (N,h,w), confidence (N,h,w); float32, on the device.

        `out_hw` defaults to the source size; only the maps in `wants` are made.
        """
        out, box = self.forward(images)
        return self.metric_maps(out, box, fx, fy, out_hw, wants)

    @torch.inference_mode()
    def metric_maps(
        self,
        out: dict,
        box: Letterbox,
        fx: float,
        fy: float,
        out_hw: tuple[int, int] | None = None,
        wants: set[str] | frozenset[str] = ALL_MAPS,
    ) -> dict[str, torch.Tensor]:
        """Crop, resize to `out_hw` in fp32 and scale to metres only the channels asked for: at
        1080p all six channels are 50 MB a frame, a colour picture needs one."""
        out_hw = out_hw or box.src_hw
        sources = {"depth": out["depth"][-1], "confidence": out["confidence"][-1]}
        normal = out["normal"][-1]  # xyz + kappa
        sources.update(normal=normal[:, :3], kappa=normal[:, 3:4])
        names = [name for name in ALL_MAPS if name in wants]
        if not names:
            return {}
        maps = torch.cat([sources[name] for name in names], dim=1).float()
        maps = F.interpolate(box.crop(maps), out_hw, mode="bilinear", align_corners=False)
        result, channel = {}, 0
        for name in names:
            width = 3 if name == "normal" else 1
            part = maps[:, channel : channel + width]
            channel += width
            result[name] = part.permute(0, 2, 3, 1) if name == "normal" else part[:, 0]
        if "depth" in result:
            result["depth"] = (result["depth"] * self.metric_scale(fx, fy, box)).clamp_(0, MAX_METRIC_DEPTH)
        return result


def short_side_size(src_hw: tuple[int, int], resolution: int) -> tuple[int, int]:
    """The ComfyUI node's `resolution`: the short side of the produced image, aspect kept."""
    k = resolution / min(src_hw)
    return max(1, round(src_hw[0] * k)), max(1, round(src_hw[1] * k))


@dataclass
class Inferred:
    """A batch's raw network outputs and what its maps are made with (Metric3DStage.infer)."""

    out: dict
    box: Letterbox
    fx: float
    fy: float
    out_hw: tuple[int, int] | None


class Metric3DStage:
    """The engine's inference stage for Metric3D: frames -> metric maps, plus what to record.

    `focal` decides each batch's focal length from the user's values, the frames' own hint (EXIF,
    video metadata: the pipeline batches only frames with the same hint) or an assumption; the
    metres scale with it. `resolution` (short side) sets the output size, else the source size is
    kept. The meta holds fx/fy at the source size with their source, and `intrinsics` (fx, fy, cx, cy)
    at the output size for the point-cloud sinks. With `comfy_resolution`, the ComfyUI node's depth and
    normal pictures are made too (`comfy_depth`, `comfy_normal`).
    """

    def __init__(
        self,
        processor: Metric3DProcessor,
        focal: FocalResolver,
        resolution: int | None = None,
        meta: dict | None = None,
        comfy_resolution: int | None = None,
    ) -> None:
        self.processor = processor
        self.comfy_resolution = comfy_resolution
        self.focal = focal
        self.resolution = resolution
        self.meta = meta or {}
        self.device = processor.device
        # forward passes a file runs side by side, and torch's pool in each (engine/plan.py use_lanes)
        self.lanes, self.lane_threads = 1, 1

    def warm_up(self, batch: int) -> None:
        """Compile a `--compile` model now, on the model thread, for the run's batch size."""
        model = getattr(self.processor.runtime, "module", None)  # the torch runtime's (compiled) module
        if hasattr(model, "warm_up"):
            model.warm_up(batch, self.processor.input_size, all_iterations=self.comfy_resolution is not None)

    def infer(self, images: torch.Tensor, focal_hint: Focal | None = None) -> tuple[Inferred, dict]:
        """The forward pass only (on the model thread, or a lane): the maps at the output size come
        from `maps`, which an engine on the CPU runs on another thread while the next batch computes."""
        src_hw = (images.shape[1], images.shape[2])
        focal = self.focal(src_hw[1], src_hw[0], focal_hint)
        out_hw = short_side_size(src_hw, self.resolution) if self.resolution else None
        meta = {**self.meta, **focal.as_meta(), "intrinsics": intrinsics_at(focal, src_hw, out_hw)}
        out, box = self.processor.forward(images, all_iterations=self.comfy_resolution is not None)
        return Inferred(out, box, focal.fx, focal.fy, out_hw), meta

    def maps(self, inferred: Inferred, wants: set[str] | frozenset[str] = ALL_MAPS) -> dict[str, torch.Tensor]:
        """The maps asked for, at the output size, on the device (and the ComfyUI pictures in that mode)."""
        i = inferred
        maps = self.processor.metric_maps(i.out, i.box, i.fx, i.fy, i.out_hw, wants)
        if self.comfy_resolution is not None:
            maps["comfy_depth"], maps["comfy_normal"] = comfy_maps(i.out, i.box, self.comfy_resolution)
        return maps

    def __call__(
        self,
        images: torch.Tensor,
        wants: set[str] | frozenset[str] = ALL_MAPS,
        focal_hint: Focal | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict]:
        inferred, meta = self.infer(images, focal_hint)
        return self.maps(inferred, wants), meta
