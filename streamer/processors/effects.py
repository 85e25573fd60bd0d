"""The `keyed` view on the model's device: distance keying and depth of field, from the metres.

Keying: a pixel is kept when its depth lies in the band near..far. The depth's edges follow the
network's coarse grid, so the hard mask is refined by a guided filter with the camera picture as
the guide: the alpha then follows the picture's own edges. Over time the mask holds still by
hysteresis in metres: a kept pixel leaves only once it is `hysteresis` beyond the band, a dropped
one enters only once it is that far inside it (the stabiliser already smoothed the metres).

Depth of field: a thin lens focused at `focus` metres blurs a point at d metres into a circle of
diameter  c = f_px * f_m / N * |1/focus - 1/d|  pixels (f_px the focal length in pixels, f_m in
metres from the sensor width, N the f-number). The picture is blurred at a few scales of a pyramid
and each pixel blends the two scales around its own circle, so the cost does not grow with the blur.

Cost (benchmarks/README.md): the band and the filter are solved on a grid 4x coarser a side (the
fast guided filter), the alpha on the half-size picture, the depth of field's circles on level 1's
grid; what is done at full size is uint8 resizes and one int16 mix into scratch tensors that live
as long as the Keyer. The guided filter is written here rather than taken from kornia because its
coefficients are needed (kornia's returns only the filtered picture) and kornia's box filter, a
convolution, costs 5-10x the running sums on a CPU. Nothing reads a value back to the host.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from streamer.effect_settings import EffectSettings, parse_background

LEVELS = 6  # pyramid scales 1, 2, 4, .. 32 px: circles up to ~64 px across
BLUR_LEVEL = 5  # the `blur` background: the picture at the coarsest scale
KEY_LEVEL = 2  # the fast guided filter's coarse grid: every 4th pixel each way, 16x less to filter
MIN_KEY_SIDE = 90  # ... but never a grid shorter than this: small pictures key on a finer level
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
    """Hard masks (N, h, w) on the coarse grid -> alpha (N, 1, H, W) in 0..1 whose edge follows the
    `guide` picture (N, 1, H, W): the frame's luma at half size (the alpha is upsampled from there
    with the weights, in uint8, for a sixth of what a float alpha at full size costs on a CPU).

    The fast guided filter (He & Sun 2015): everything is solved on the coarse grid, and only the
    linear coefficients a, b are upsampled, so the guide's size costs one upsample and a * I + b.
    Two passes: the first pulls the edge from the depth's grid towards the picture's edge (cut
    again at one half), the second makes the soft alpha along it. The window is about 1/60 of the
    short side, wide enough to reach from the depth's edge (a network's grid cell is about 1/40 of
    it, its edges bleed a few pixels) to the picture's."""
    small = subsample(guide, tuple(mask.shape[-2:]))
    kernel = 2 * max(1, min(mask.shape[-2:]) // 60) + 1  # a radius of 1/60 of the short side
    mean_i, corr_i = box_filter(torch.cat((small, small * small), 1), kernel).split(1, 1)
    stats = (small, mean_i, corr_i - mean_i * mean_i + GUIDE_EPS)  # the guide's, the same for both passes
    a, b = guided_coefficients(stats, mask[:, None].float(), kernel)
    hard = (torch.addcmul(b, a, small) > 0.5).float()
    a, b = guided_coefficients(stats, hard, kernel)
    # only along the edge: elsewhere the filter would print the picture's texture into the matte
    edge = box_filter(hard, kernel)  # within the window's reach (the upsample spreads it one cell)
    edge = (edge > 0) & (edge < 1)
    a = torch.where(edge, a, 0.0)
    b = torch.where(edge, b, hard)
    ab = F.interpolate(torch.cat((a, b), dim=1), guide.shape[-2:], mode="bilinear", align_corners=False)
    return torch.addcmul(ab[:, 1:], ab[:, :1], guide).clamp_(0.0, 1.0)


def guided_coefficients(
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], p: torch.Tensor, kernel: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The guided filter's window-averaged linear coefficients (N, 1, h, w): q = a * guide + b
    follows p. `stats`: the guide, its window means and its window variances plus the regulariser."""
    guide, mean_i, var_i = stats
    mean_p, corr_ip = box_filter(torch.cat((p, guide * p), 1), kernel).split(1, 1)
    a = (corr_ip - mean_i * mean_p) / var_i
    return box_filter(torch.cat((a, mean_p - a * mean_i), 1), kernel).split(1, 1)


def box_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """Means over k x k windows (edges repeated), (N, C, h, w), from running sums along each axis:
    a few passes whatever k is, 5-10x faster on a CPU than the convolution kornia's box_blur runs."""
    r = k // 2
    sums = F.pad(x, (r, r, r, r), mode="replicate").cumsum(-1)
    x = sums[..., k - 1 :].clone()
    x[..., 1:] -= sums[..., :-k]
    sums = x.cumsum(-2)
    x = sums[..., k - 1 :, :].clone()
    x[..., 1:, :] -= sums[..., :-k, :]
    return x.mul_(1.0 / (k * k))


def grid_indices(size: int, cells: int, device: torch.device) -> torch.Tensor:
    """The pixel at the centre of each of `cells` equal cells along an axis of `size` pixels."""
    return ((2 * torch.arange(cells, device=device) + 1) * size // (2 * cells)).clamp_(max=size - 1)


def subsample(maps: torch.Tensor, cells: tuple[int, int]) -> torch.Tensor:
    """(..., H, W) -> the pixels at the cells' centres (..., h, w): points, not means, so that the
    guide keeps its texture's variance (the filter's coefficients are applied to the finer picture)
    and metres are never averaged across an edge into distances that are not there."""
    h, w = maps.shape[-2:]
    if h % cells[0] == 0 and w % cells[1] == 0:  # the same pixels, as a strided view
        sy, sx = h // cells[0], w // cells[1]
        return maps[..., sy // 2 :: sy, sx // 2 :: sx]
    rows, cols = grid_indices(h, cells[0], maps.device), grid_indices(w, cells[1], maps.device)
    return maps.index_select(-2, rows).index_select(-1, cols)


def resize(images: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """(N, C, H, W) uint8 (channels-last, as NHWC frames are) -> bilinear to `size`, uint8.

    On CPUs torch resizes uint8 itself, 5-10x faster than through float; other devices go through float."""
    if images.device.type == "cpu":
        return F.interpolate(images, size, mode="bilinear", antialias=antialias, align_corners=False)
    out = F.interpolate(images.float(), size, mode="bilinear", antialias=antialias, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def level_size(hw: tuple[int, int], level: int) -> tuple[int, int]:
    return (max(1, -(-hw[0] // 2**level)), max(1, -(-hw[1] // 2**level)))


def key_level(hw: tuple[int, int]) -> int:
    """The pyramid level the key is solved on: KEY_LEVEL, or a finer one where that grid would be
    shorter than MIN_KEY_SIDE (a 320x240 picture keys at half size, a thumbnail at full size)."""
    level = KEY_LEVEL
    while level and min(level_size(hw, level)) < MIN_KEY_SIDE:
        level -= 1
    return level


def pyramid(images: torch.Tensor, levels: int = LEVELS) -> list[torch.Tensor]:
    """(N, H, W, 3) uint8 -> level i: the picture shrunk 2**i times with an antialiasing (triangle)
    filter, (N, 3, h, w) uint8; level i stands for a blur about 2**i pixels wide. Each level is
    shrunk from the one before it: the full picture is read once, the rest costs a third of that."""
    out = [images.permute(0, 3, 1, 2)]
    hw = tuple(out[0].shape[-2:])
    for i in range(1, levels):
        if min(level_size(hw, i)) < 2:
            break
        out.append(resize(out[-1], level_size(hw, i), antialias=True))
    return out


def weights(alpha: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) float in 0..1 -> (N, 3, H, W) uint8 in 0..128, channels-last like the pictures:
    mixing weights in 7-bit fixed point, one per channel, because an elementwise op that broadcasts
    over the innermost size-3 axis costs several times one that does not."""
    w = (alpha * 128.0).round_().to(torch.uint8).permute(0, 2, 3, 1)
    return torch.cat((w, w, w), dim=3).permute(0, 3, 1, 2)


class Workspace:
    """Scratch tensors kept from frame to frame: a fresh full-size int16 tensor costs its page
    faults on every frame (the allocator hands such sizes back to the system), more than the
    arithmetic done in it; an in-place op between two dtypes makes such a copy behind the scenes.
    Reuse is safe on CUDA too: the next frame's work queues on the same stream after this one's."""

    def __init__(self) -> None:
        self._tensors: dict[tuple, torch.Tensor] = {}

    def get(self, name: str, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A tensor of `like`'s shape (contiguous) and `dtype`, the same one for the same name and size."""
        key = (name, tuple(like.shape), dtype, like.device)
        if key not in self._tensors:
            if len(self._tensors) >= 32:  # the picture size changed: drop the old sizes
                self._tensors.clear()
            self._tensors[key] = torch.empty(like.shape, dtype=dtype, device=like.device)
        return self._tensors[key]


def mix(base: torch.Tensor | None, other: torch.Tensor, weight: torch.Tensor, work: Workspace) -> torch.Tensor:
    """base + weight / 128 * (other - base) on uint8 NHWC pictures, `weight` from weights() (`base`
    None: black): on int16, a third of the cost of float on a CPU (one level of error at most)."""
    out, w = work.get("mix", other, torch.int16).copy_(other), work.get("weight", other, torch.int16).copy_(weight)
    if base is None:
        return out.mul_(w).__irshift__(7).to(torch.uint8)
    b = work.get("base", other, torch.int16).copy_(base)
    out.sub_(b).mul_(w).__irshift__(7)
    return out.add_(b).to(torch.uint8)


def blend_levels(levels: list[torch.Tensor], index: torch.Tensor, work: Workspace) -> torch.Tensor:
    """Per pixel, the two pyramid levels around a fractional level `index` (N, 1, h, w), given on
    level 1's grid (the depth's own grid is coarser than that): (N, 3, H, W) channels-last uint8.

    Coarse to fine: each level mixes itself with the (upsampled) blend below it, so only one
    full-size upsample of the picture is paid however many levels there are; the full-size mix
    takes its weights upsampled from level 1's grid, already in uint8 and per channel."""
    if len(levels) == 1:
        return levels[0]
    steps = [index, index]
    for level in levels[2:]:
        steps.append(F.adaptive_avg_pool2d(steps[-1], tuple(level.shape[-2:])))
    acc = levels[-1]
    for i in range(len(levels) - 2, -1, -1):
        size = tuple(levels[i].shape[-2:])
        weight = weights((steps[i] - i).clamp_(0.0, 1.0))
        weight = (weight if i else resize(weight, size)).permute(0, 2, 3, 1)
        acc = mix(levels[i].permute(0, 2, 3, 1), resize(acc, size).permute(0, 2, 3, 1), weight, work)
        acc = acc.permute(0, 3, 1, 2)
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
    work: Workspace | None = None,
) -> torch.Tensor:
    """(N, H, W, 3) uint8 pictures, (N, H, W) metres -> the pictures as a lens focused at `focus`
    sees them, (N, H, W, 3) uint8. The circles are worked out on the pyramid's level-1 grid: a
    quarter of the pixels, and still finer than the network's own grid."""
    height, width = images.shape[1:3]
    coc = circle_of_confusion(
        subsample(depth, level_size((height, width), 1)),
        effects.focus,
        effects.aperture,
        f_px,
        focal_metres(f_px, width, effects.sensor_width),
    )
    levels = levels if levels is not None else pyramid(images)
    index = torch.log2(1.0 + coc[:, None] / 2.0)
    return blend_levels(levels, index, work or Workspace()).permute(0, 2, 3, 1)


class Keyer:
    """One sink's keyed pictures: keeps the previous mask (hysteresis) and the background picture."""

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self._backgrounds: dict[tuple, torch.Tensor] = {}
        self._work = Workspace()

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
        if kind == "blur":  # the pyramid's coarsest level, or shrunk to its size from the half-size one
            small = (
                levels[BLUR_LEVEL]
                if len(levels) > BLUR_LEVEL
                else resize(levels[-1], level_size((h, w), BLUR_LEVEL), True)
            )
            return resize(small, (h, w)).permute(0, 2, 3, 1)
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
        levels = pyramid(images) if effects.focus is not None else [images.permute(0, 3, 1, 2)]
        picture = (
            depth_of_field(images, depth, effects, f_px, levels, self._work) if effects.focus is not None else images
        )
        if kind == "none":
            return picture.contiguous()
        hw = tuple(depth.shape[-2:])
        if len(levels) == 1:  # the key's guide and the blurred background start from half size
            levels.append(resize(levels[0], level_size(hw, 1), antialias=True))
        level = key_level(hw)
        masks = self.masks(subsample(depth, level_size(hw, level)), effects)
        guide = levels[1].permute(0, 2, 3, 1) if level else images  # half size, or the picture itself
        alpha = refine(masks, guide_of(guide))
        background = self.background(effects, levels)
        if background is None and alpha_out:
            a8 = resize((alpha * 255.0).round_().to(torch.uint8), hw)
            return torch.cat((picture, a8.permute(0, 2, 3, 1)), dim=3)
        weight = resize(weights(alpha), hw).permute(0, 2, 3, 1)
        return mix(background, picture, weight, self._work)  # no background and no alpha channel: black


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
