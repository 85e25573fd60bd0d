"""The `keyed` view on the model's device: distance keying and depth of field, from the metres.

Keying: a pixel is kept when its depth lies in the band near..far. The depth's edges follow the
network's coarse grid, so the hard mask is refined by a guided filter (kornia) with the camera
picture as the guide: the alpha then follows the picture's own edges. Over time the mask holds
still by hysteresis in metres: a kept pixel leaves only once it is `hysteresis` beyond the band,
a dropped one enters only once it is that far inside it (the stabiliser already smoothed the metres).

Depth of field: a thin lens focused at `focus` metres blurs a point at d metres into a circle of
diameter  c = f_px * f_m / N * |1/focus - 1/d|  pixels (f_px the focal length in pixels, f_m in
metres from the sensor width, N the f-number). The picture is blurred at a few scales of a pyramid
and each pixel blends the two scales around its own circle, so the cost does not grow with the blur.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from kornia.filters import guided_blur

from streamer.effect_settings import EffectSettings, parse_background

LEVELS = 6  # pyramid scales 1, 2, 4, .. 32 px: circles up to ~64 px across
BLUR_LEVEL = 5  # the `blur` background: the picture at the coarsest scale
GUIDE_EPS = 1e-3  # guided filter regulariser (guide in 0..1): below the variance of a real edge
ASSUMED_HFOV = 70.0  # degrees, when the stage said nothing of the focal length (as focal.py assumes)


def band_mask(
    depth: torch.Tensor, near: float, far: float, margin: float, previous: torch.Tensor | None
) -> torch.Tensor:
    """(H, W) metres -> bool mask of the band, with hysteresis against the `previous` mask."""
    valid = depth > 0
    inside = valid & (depth >= near + margin) & (depth <= far - margin)
    if previous is None or previous.shape != depth.shape:
        return valid & (depth >= near) & (depth <= far)
    loose = valid & (depth >= near - margin) & (depth <= far + margin)
    return inside | (previous & loose)


def guide_of(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 1, H, W) luma in 0..1: the guide for the mask's edge."""
    # the weights as Python numbers: a tensor of them, made per frame, would wait for the host on CUDA
    rgb = images.float()
    return ((0.299 / 255.0) * rgb[..., 0] + (0.587 / 255.0) * rgb[..., 1] + (0.114 / 255.0) * rgb[..., 2])[:, None]


def refine(mask: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Hard masks (N, H, W) -> alpha (N, 1, H, W) in 0..1 whose edge follows the guide picture.

    Two guided filter passes: the first pulls the edge from the depth's grid towards the picture's
    edge (cut again at one half), the second makes the soft alpha along it. The window is about
    1/60 of the short side, wide enough to reach from the depth's edge (a network's grid cell is
    about 1/40 of it, its edges bleed a few pixels) to the picture's; subsampling by 4 is the fast
    guided filter."""
    short = min(mask.shape[-2:])
    radius = max(2, short // 60)
    subsample = 4 if short >= 256 else 1
    kernel = 2 * (radius // subsample) * subsample + 1
    hard = (guided_blur(guide, mask[:, None].float(), kernel, GUIDE_EPS, subsample=subsample) > 0.5).float()
    soft = guided_blur(guide, hard, kernel, GUIDE_EPS, subsample=subsample).clamp_(0.0, 1.0)
    # only along the edge: elsewhere the filter would print the picture's texture into the matte
    return torch.where(near_edge(hard, kernel // 2), soft, hard)


def near_edge(hard: torch.Tensor, reach: int) -> torch.Tensor:
    """(N, 1, H, W) 0/1 -> where both values lie within `reach` pixels, found on a 4x smaller grid
    (a full-size max filter that wide costs more than the rest of the key)."""
    cells = F.avg_pool2d(hard, 4, ceil_mode=True)
    k = 2 * (reach // 4 + 1) + 1
    mixed = (max_filter(cells, k) > 0) & (-max_filter(-cells, k) < 1)
    return F.interpolate(mixed.float(), scale_factor=4, mode="nearest")[..., : hard.shape[-2], : hard.shape[-1]] > 0


def max_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """A k x k max filter as two 1-D passes (torch's 2-D max pool costs k*k a pixel on CPUs)."""
    x = F.max_pool2d(x, (1, k), 1, (0, k // 2))
    return F.max_pool2d(x, (k, 1), 1, (k // 2, 0))


def resize(images: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """(N, C, H, W) uint8 (channels-last, as NHWC frames are) -> bilinear to `size`, uint8.

    On CPUs torch resizes uint8 itself, 5-10x faster than through float; other devices go through float."""
    if images.device.type == "cpu":
        return F.interpolate(images, size, mode="bilinear", antialias=antialias, align_corners=False)
    out = F.interpolate(images.float(), size, mode="bilinear", antialias=antialias, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def level_size(hw: tuple[int, int], level: int) -> tuple[int, int]:
    return (max(1, -(-hw[0] // 2**level)), max(1, -(-hw[1] // 2**level)))


def pyramid(images: torch.Tensor, levels: int = LEVELS) -> list[torch.Tensor]:
    """(N, H, W, 3) uint8 -> level i: the picture shrunk 2**i times with an antialiasing (triangle)
    filter, (N, 3, h, w) uint8; level i stands for a blur about 2**i pixels wide. Each level is made
    from the full picture: one read of it, no error piling up level on level."""
    full = images.permute(0, 3, 1, 2)
    hw = tuple(full.shape[-2:])
    return [full] + [
        resize(full, level_size(hw, i), antialias=True) for i in range(1, levels) if min(level_size(hw, i)) >= 2
    ]


def mix(base: torch.Tensor, other: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """base + weight * (other - base) on uint8 NHWC pictures, `weight` (N, H, W, 1) in 0..1: in
    7-bit fixed point on int16, half the cost of float on a CPU (2 levels of error at most)."""
    w = (weight * 128.0).round_().to(torch.int16)
    b = base.to(torch.int16)
    return (b + ((w * (other.to(torch.int16) - b)) >> 7)).to(torch.uint8)


def blend_levels(levels: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """Per pixel, the two pyramid levels around a fractional level `index` (N, 1, H, W): NHWC uint8.

    Coarse to fine: each level mixes itself with the (upsampled) blend below it, so only one
    full-size upsample is paid however many levels there are."""
    steps = [index]
    for level in levels[1:]:
        steps.append(F.adaptive_avg_pool2d(steps[-1], tuple(level.shape[-2:])))
    acc = levels[-1].permute(0, 2, 3, 1)
    for i in range(len(levels) - 2, -1, -1):
        size = tuple(levels[i].shape[-2:])
        up = resize(acc.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)
        acc = mix(levels[i].permute(0, 2, 3, 1), up, (steps[i] - i).clamp_(0.0, 1.0).permute(0, 2, 3, 1))
    return acc


def circle_of_confusion(depth: torch.Tensor, focus: float, aperture: float, f_px: float, f_m: float) -> torch.Tensor:
    """Blur circle diameter in pixels for each depth (metres); 0 at the focus plane."""
    inverse = torch.where(depth > 0, 1.0 / depth.clamp(min=1e-3), torch.zeros_like(depth))
    return (f_px * f_m / aperture) * (1.0 / focus - inverse).abs()


def focal_metres(f_px: float, width: int, sensor_width_mm: float) -> float:
    """The focal length in metres of a lens giving the same field of view on a sensor this wide."""
    return f_px * sensor_width_mm / 1000.0 / width


def default_focal_px(width: int) -> float:
    return width / (2.0 * math.tan(math.radians(ASSUMED_HFOV) / 2.0))


def depth_of_field(
    images: torch.Tensor,
    depth: torch.Tensor,
    effects: EffectSettings,
    f_px: float,
    levels: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """(N, H, W, 3) uint8 pictures, (N, H, W) metres -> the pictures as a lens focused at `focus`
    sees them, (N, H, W, 3) uint8."""
    width = images.shape[2]
    coc = circle_of_confusion(
        depth, effects.focus, effects.aperture, f_px, focal_metres(f_px, width, effects.sensor_width)
    )
    levels = levels if levels is not None else pyramid(images)
    return blend_levels(levels, torch.log2(1.0 + coc[:, None] / 2.0))


class Keyer:
    """One sink's keyed pictures: keeps the previous mask (hysteresis) and the background picture."""

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self._backgrounds: dict[tuple, torch.Tensor] = {}

    def masks(self, depth: torch.Tensor, effects: EffectSettings) -> torch.Tensor:
        """(N, H, W) metres -> bool masks, frame after frame through the hysteresis."""
        out = []
        for d in depth:
            self.previous = band_mask(d, effects.near, effects.far, effects.hysteresis, self.previous)
            out.append(self.previous)
        return torch.stack(out)

    def background(self, effects: EffectSettings, levels: list[torch.Tensor]) -> torch.Tensor | None:
        """(1, H, W, 3) uint8: what shows where the key drops the picture (None: transparent)."""
        kind, arg = parse_background(effects.background)
        full = levels[0]
        h, w = full.shape[-2:]
        if kind == "blur":
            return resize(levels[min(BLUR_LEVEL, len(levels) - 1)], (h, w)).permute(0, 2, 3, 1)
        if kind == "transparent":
            return None
        key = (effects.background, h, w, full.device)
        if key not in self._backgrounds:
            if kind == "color":
                colour = torch.tensor(arg, dtype=torch.uint8, device=full.device)
                self._backgrounds = {key: colour.view(1, 1, 1, 3).expand(1, h, w, 3).contiguous()}
            else:
                self._backgrounds = {key: load_background(arg, h, w, full.device)}
        return self._backgrounds[key]

    def __call__(
        self, images: torch.Tensor, depth: torch.Tensor, effects: EffectSettings, f_px: float, alpha_out: bool
    ) -> torch.Tensor:
        """(N, H, W, 3) uint8 pictures at the depth's size + metres -> (N, H, W, 3 or 4) uint8."""
        kind = effects.background_kind
        levels = pyramid(images) if (effects.focus is not None or kind == "blur") else [images.permute(0, 3, 1, 2)]
        picture = depth_of_field(images, depth, effects, f_px, levels) if effects.focus is not None else images
        if kind == "none":
            return picture.contiguous()
        alpha = refine(self.masks(depth, effects), guide_of(images))
        weight = alpha.permute(0, 2, 3, 1)  # (N, H, W, 1): C = 1, so NHWC without a copy
        background = self.background(effects, levels)
        if background is None and alpha_out:
            return torch.cat((picture, (alpha * 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1)), dim=3)
        if background is None:  # no alpha channel: transparent shows as black
            background = torch.zeros((1, 1, 1, 3), dtype=torch.uint8, device=images.device)
        return mix(background.expand_as(picture), picture, weight)


def load_background(path, height: int, width: int, device: torch.device) -> torch.Tensor:
    """A background picture file -> (1, H, W, 3) uint8 on the device, covering the frame (centre crop)."""
    from PIL import Image  # Pillow is a dependency already (EXIF); only this background needs it

    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"))
    t = torch.from_numpy(array.copy()).to(device).permute(2, 0, 1)[None].float()
    scale = max(height / t.shape[-2], width / t.shape[-1])
    size = (max(height, round(t.shape[-2] * scale)), max(width, round(t.shape[-1] * scale)))
    t = F.interpolate(t, size, mode="bilinear", align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    t = t[..., top : top + height, left : left + width]
    return t.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
