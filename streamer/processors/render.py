"""Metric maps to 8-bit pictures on the model's device: display range, gray, colormap, normals,
side-by-side, letterbox, and the YUV planes encoders take.

Only the picture crosses to the host (1.5 bytes a pixel for yuv420p instead of 24 for six float
maps), and the sink thread only encodes. The display range must not flicker, so by default it
follows the 2nd..98th depth percentiles of a strided sample through an exponential moving
average; it stays on the device as 0-d tensors, so no frame waits for a host round trip.
"""

from __future__ import annotations

import cv2

import numpy as np
import torch
import torch.nn.functional as F

from streamer.legend import colormap_colors, legend_picture
from streamer.processors.effects import Keyer, default_focal_px
from streamer.views import COLORMAPS, PictureSettings, PictureSnapshot

SMOOTHING = 0.1  # EMA weight of the newest frame in auto mode
SAMPLE_STRIDE = 4  # percentiles from every 4th pixel in both directions
PERCENTILES = (0.02, 0.98)
# full-range BT.709: what the video sink tags its files with
KR, KB = 0.2126, 0.0722
_LUTS: dict[tuple[str, torch.device], torch.Tensor] = {}
_CONSTANTS: dict[tuple, torch.Tensor] = {}


def range_dtype(device: torch.device) -> torch.dtype:
    """float64 for the display range (as numpy computed it), float32 where the device has no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def colormap_lut(name: str, device: torch.device) -> torch.Tensor:
    """OpenCV's colormap as a (256, 3) RGB lookup table on the device (the same colours as cv2)."""
    key = (name, device)
    if key not in _LUTS:
        code = getattr(cv2, f"COLORMAP_{name.upper()}")
        bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), code)[:, 0]
        _LUTS[key] = torch.from_numpy(np.ascontiguousarray(bgr[:, ::-1])).to(device)
    return _LUTS[key]


def constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small tensor of Python numbers, made on the device once: made per frame it would be a
    host-to-device copy, and on CUDA a wait for the host."""
    key = (values, dtype, device)
    made = _CONSTANTS.get(key)  # one lookup: another renderer's thread may clear the table meanwhile
    if made is None:
        if len(_CONSTANTS) > 64:  # ranges a person typed in: keep only recent ones
            _CONSTANTS.clear()
        made = _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return made


def valid_quantiles(sample: torch.Tensor, valid: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """torch.nanquantile of the valid values (linear interpolation), without its check of `q`
    on the host: a wait for the device on CUDA. Invalid values sort last, as NaN would.

    On the CPU the ranks are picked by selection instead of a full sort: numpy's partition at all
    the ranks in one pass, the same values in a sixth of the time for a 1080p frame's sample."""
    marked = torch.where(valid, sample, torch.inf)
    rank = (valid.sum() - 1).clamp_(min=0).to(q.dtype) * q
    below, above = rank.floor(), rank.ceil()
    if sample.device.type == "cpu":
        ranks = sorted({int(v) for v in (*below, *above)})
        picked = dict(zip(ranks, np.partition(marked.numpy(), ranks)[ranks].tolist(), strict=True))
        low = torch.tensor([picked[int(v)] for v in below], dtype=sample.dtype)
        high = torch.tensor([picked[int(v)] for v in above], dtype=sample.dtype)
    else:
        ordered = marked.sort().values
        low, high = ordered.take(below.long()), ordered.take(above.long())
    return torch.lerp(low, high, rank - below)


class DisplayRange:
    """near/far in metres per frame; `update` moves them, keeping the state on the device."""

    def __init__(self) -> None:
        self.near: torch.Tensor | None = None  # float64 0-d tensors once initialised
        self.far: torch.Tensor | None = None
        self._seen: torch.Tensor | None = None  # a frame with valid depth has set the range

    def update(self, depth: torch.Tensor, s: PictureSnapshot) -> tuple[torch.Tensor, torch.Tensor]:
        if s.range == "fixed":
            near, far = constant((s.near, s.far), range_dtype(depth.device), depth.device)
            return near, far
        sample = depth[::SAMPLE_STRIDE, ::SAMPLE_STRIDE].reshape(-1)
        valid = sample > 0
        if s.range == "frame":
            lo = torch.where(valid, sample, torch.inf).amin()
            hi = torch.where(valid, sample, -torch.inf).amax()
        else:
            lo, hi = valid_quantiles(sample, valid, constant(PERCENTILES, sample.dtype, sample.device))
        lo, hi = lo.to(range_dtype(lo.device)), hi.to(range_dtype(lo.device))
        hi = torch.maximum(hi, lo + 1e-3)
        found = valid.any()
        if self.near is None:
            self.near = torch.tensor(s.near, dtype=lo.dtype, device=lo.device)
            self.far = torch.tensor(s.far, dtype=lo.dtype, device=lo.device)
            self._seen = torch.zeros((), dtype=torch.bool, device=lo.device)
        if s.range == "auto":  # smooth only once a frame has set the range
            lo = torch.where(self._seen, (1 - SMOOTHING) * self.near + SMOOTHING * lo, lo)
            hi = torch.where(self._seen, (1 - SMOOTHING) * self.far + SMOOTHING * hi, hi)
        self.near = torch.where(found, lo, self.near)
        self.far = torch.where(found, hi, self.far)
        self._seen = self._seen | found
        return self.near, self.far


def depth_u8(depth: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Near = 255, far = 0 (the ControlNet depth convention), linear in metres; (N, H, W) uint8.

    `near`/`far` are float64 (N, 1, 1): the scale is rounded to float32 once, as numpy did.
    """
    scale = (255.0 / (far - near)).float()
    return ((far.float() - depth) * scale).clamp_(0, 255).to(torch.uint8)


def normal_rgb(normal: torch.Tensor) -> torch.Tensor:
    """Unit normals (N, H, W, 3) in [-1, 1] -> RGB (x, y, z) in 0..255."""
    return ((normal + 1.0) * 127.5).clamp_(0, 255).to(torch.uint8)


def resize_u8(images: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, h, w, C): area average when shrinking (as cv2 INTER_AREA), else bilinear."""
    if tuple(images.shape[1:3]) == tuple(hw):
        return images
    x = images.permute(0, 3, 1, 2).float()
    shrink = hw[0] <= images.shape[1] and hw[1] <= images.shape[2]
    x = F.interpolate(x, hw, mode="area") if shrink else F.interpolate(x, hw, mode="bilinear", align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def letterbox(pictures: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Fit (N, H, W, C) into width x height keeping aspect, black bars around (RGBA: clear ones)."""
    n, h, w, c = pictures.shape
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    out = torch.zeros((n, height, width, c), dtype=torch.uint8, device=pictures.device)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[:, top : top + nh, left : left + nw] = resize_u8(pictures, (nh, nw))
    return out


def rgb_to_yuv(pictures: torch.Tensor, pixel_format: str) -> torch.Tensor:
    """(N, H, W, 3) RGB -> full-range BT.709 planes in PyAV's `from_ndarray` layout.

    yuv420p: (N, H*3/2, W) with U and V from 2x2 means (the transform is linear, so the chroma
    of the mean colour: a quarter of the work); yuv444p: (N, 3, H, W), also what an odd-sized
    yuv420p picture becomes (4:2:0 needs even sizes; the picture keeps its size).
    """
    rgb = pictures.permute(0, 3, 1, 2).float()
    n, _, h, w = rgb.shape
    y = luma(rgb)
    if pixel_format == "yuv444p" or h % 2 or w % 2:
        return to_u8(torch.cat((y[:, None], chroma(rgb, y)), dim=1))
    pooled = F.avg_pool2d(rgb, 2)
    uv = chroma(pooled, luma(pooled))
    return to_u8(torch.cat((y.reshape(n, -1), uv.reshape(n, -1)), dim=1).reshape(n, h * 3 // 2, w))


def luma(rgb: torch.Tensor) -> torch.Tensor:
    return KR * rgb[:, 0] + (1 - KR - KB) * rgb[:, 1] + KB * rgb[:, 2]


def chroma(rgb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W): U and V centred on 128."""
    u = (rgb[:, 2] - y) / (2 * (1 - KB)) + 128.0
    v = (rgb[:, 0] - y) / (2 * (1 - KR)) + 128.0
    return torch.stack((u, v), dim=1)


def to_u8(t: torch.Tensor) -> torch.Tensor:
    return t.round_().clamp_(0, 255).to(torch.uint8)


def yuv_lut(view: str, colormap: str, device: torch.device) -> torch.Tensor:
    """(256, 3) full-range BT.709 Y, U, V of each depth level's colour: gray is (v, 128, 128)."""
    key = (f"yuv:{view}:{colormap}", device)
    if key not in _LUTS:
        if view == "gray":
            rgb = torch.arange(256, dtype=torch.uint8, device=device)[:, None].expand(256, 3)
        else:
            rgb = colormap_lut(colormap, device)
        _LUTS[key] = rgb_to_yuv(rgb.reshape(1, 1, 256, 3).contiguous(), "yuv444p")[0, :, 0].t().contiguous()
    return _LUTS[key]


def levels_to_yuv(levels: torch.Tensor, lut: torch.Tensor, pixel_format: str) -> torch.Tensor:
    """Depth levels (N, H, W) uint8 -> YUV planes by table lookup: no per-pixel colour maths.

    4:2:0 chroma takes the colour of each 2x2 block's mean level."""
    n, h, w = levels.shape
    y_of, u_of, v_of = (lut[:, c].contiguous() for c in range(3))
    if pixel_format == "yuv444p" or h % 2 or w % 2:
        return torch.stack([look_up(table, levels) for table in (y_of, u_of, v_of)], dim=1)
    block = block_mean_u8(levels)
    uv = torch.cat([look_up(table, block).reshape(n, -1) for table in (u_of, v_of)], dim=1)
    y = look_up(y_of, levels)
    return torch.cat((y.reshape(n, -1), uv), dim=1).reshape(n, h * 3 // 2, w)


def look_up(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for integer levels, shaped index.shape + the table's rows: `index_select` on
    int32, three times faster on a CPU than advanced indexing or `torch.take` with int64."""
    picked = table.index_select(0, index.reshape(-1).int())
    return picked.view(*index.shape, *table.shape[1:])


def block_mean_u8(levels: torch.Tensor) -> torch.Tensor:
    """(N, H, W) uint8 -> the rounded mean of each 2x2 block (halves to even, as torch.round), int32:
    on the CPU by integer sums, three times faster there than avg_pool2d in float, which other
    devices keep (the same numbers)."""
    if levels.device.type != "cpu":
        return F.avg_pool2d(levels[:, None].float(), 2)[:, 0].round_().int()
    n, h, w = levels.shape
    x = levels.view(n, h // 2, 2, w // 2, 2).to(torch.int16)  # sums to 1020 at most
    total = x[:, :, 0, :, 0] + x[:, :, 0, :, 1] + x[:, :, 1, :, 0] + x[:, :, 1, :, 1]
    mean, rest = total >> 2, total & 3
    return (mean + ((rest > 2) | ((rest == 2) & (mean & 1 == 1))).to(torch.int16)).int()


def side_by_side_yuv420(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Two (N, H*3/2, W) yuv420p pictures -> one (N, H*3/2, 2W): each plane joined side by side."""
    n, rows, w = left.shape
    h = rows * 2 // 3
    sizes = (h * w, h * w // 4, h * w // 4)
    shapes = ((h, w), (h // 2, w // 2), (h // 2, w // 2))
    planes = []
    for a, b, shape in zip(
        left.reshape(n, -1).split(sizes, 1), right.reshape(n, -1).split(sizes, 1), shapes, strict=True
    ):
        planes.append(torch.cat((a.reshape(n, *shape), b.reshape(n, *shape)), dim=2).reshape(n, -1))
    return torch.cat(planes, dim=1).reshape(n, rows, 2 * w)


class Renderer:
    """One sink's pictures, made on the device from the maps; keeps that sink's display range.

    `settings` are live (a person may change them); every call takes a `PictureSnapshot` of them,
    taken once per batch by the engine, so the maps asked for and the picture agree."""

    def __init__(self, settings: PictureSettings | None = None) -> None:
        self.settings = settings or PictureSettings()
        self.display = DisplayRange()
        self.keyer = Keyer()
        self.focal_px: float | None = None  # at the output size, from the stage's meta (Outputs sets it)
        self.last_range: torch.Tensor | None = None  # (N, 2) near, far metres of the batch's pictures
        self._legends: dict[tuple, torch.Tensor] = {}

    def snapshot(self) -> PictureSnapshot:
        return self.settings.snapshot()

    @staticmethod
    def maps_needed(s: PictureSnapshot) -> set[str]:
        """What the stage must produce for the snapshot's view."""
        needed = {"normal"} if s.view == "normal" else {"depth"}
        return needed | ({"image"} if s.view in ("side-by-side", "keyed") else set())

    def levels(self, depth: torch.Tensor, s: PictureSnapshot) -> torch.Tensor:
        """(N, H, W) metres -> 0..255 levels in this sink's display range (near = 255)."""
        ranges = [self.display.update(d, s) for d in depth]
        near = torch.stack([lo for lo, _ in ranges]).to(depth.device).view(-1, 1, 1)
        far = torch.stack([hi for _, hi in ranges]).to(depth.device).view(-1, 1, 1)
        self.last_range = torch.cat((near.view(-1, 1), far.view(-1, 1)), dim=1).float()
        return depth_u8(depth, near, far)

    def pictures(self, maps: dict[str, torch.Tensor], s: PictureSnapshot) -> torch.Tensor:
        """(N, H, W, 3) RGB uint8; `maps` holds depth/normal, `image` (the input at output size), or
        `picture` when an image processor (ControlNet) made the picture already."""
        if "picture" in maps:
            picture = maps["picture"]
        elif s.view == "normal":
            picture = normal_rgb(maps["normal"])
        elif s.view == "keyed":
            picture = self.keyed(maps, s)
        else:
            u8 = self.levels(maps["depth"], s)
            picture = (
                u8[..., None].expand(-1, -1, -1, 3)
                if s.view == "gray"
                else look_up(colormap_lut(s.colormap, u8.device), u8)
            )
        if s.legend and s.view in ("gray", "color", "side-by-side") and "picture" not in maps:
            picture = self.burn_legend(picture, s)
        if s.view == "side-by-side" and "image" in maps:
            picture = torch.cat((resize_u8(maps["image"], tuple(picture.shape[1:3])), picture), dim=2)
        if s.fit is not None:
            picture = letterbox(picture, *s.fit)
        return picture

    def burn_legend(self, picture: torch.Tensor, s: PictureSnapshot) -> torch.Tensor:
        """The colour bar with metre ticks, bottom left. It reads the range on the host (text needs a
        font): one small wait for the device per batch, only with --legend."""
        near, far = (round(float(v), 2) for v in self.last_range[-1])
        n, h, w, _ = picture.shape
        key = (s.view, s.colormap, near, far, w, picture.device)
        if key not in self._legends:
            colors = colormap_colors(s.colormap, s.view == "gray")
            plate = legend_picture(colors, near, far, min(w, max(160, w // 3)))[: h // 3]
            self._legends = {key: torch.from_numpy(plate).to(picture.device)}
        plate = self._legends[key]
        ph, pw = plate.shape[:2]
        out = picture.clone()
        region = out[:, h - ph :, :pw].float()
        alpha = plate[..., 3:].float() / 255.0
        out[:, h - ph :, :pw] = (region + alpha * (plate[..., :3].float() - region)).round_().to(torch.uint8)
        return out

    def keyed(self, maps: dict[str, torch.Tensor], s: PictureSnapshot) -> torch.Tensor:
        """The camera picture keyed by distance and/or with depth of field (processors/effects.py)."""
        effects, depth = s.effects, maps["depth"]
        f_px = self.focal_px or default_focal_px(depth.shape[-1])
        # an alpha channel only where the picture stays RGB: YUV planes have none (transparent is black)
        alpha = s.alpha and s.pixel_format == "rgb24" and effects.background_kind == "transparent"
        return self.keyer(resize_u8(maps["image"], tuple(depth.shape[1:3])), depth, effects, f_px, alpha)

    def __call__(self, maps: dict[str, torch.Tensor], s: PictureSnapshot | None = None) -> torch.Tensor:
        """The picture in the sink's pixel format (RGB, or YUV planes for an encoder), made with
        snapshot `s` (the settings as they are now when not given)."""
        s = s or self.snapshot()
        if s.pixel_format == "rgb24":
            return self.pictures(maps, s).contiguous()
        if s.fit is None and "picture" not in maps and s.view in ("gray", "color", "side-by-side") and not s.legend:
            depth = maps["depth"]
            n, h, w = depth.shape
            if s.view == "side-by-side" and not (s.pixel_format == "yuv420p" and h % 2 == 0 and w % 2 == 0):
                return rgb_to_yuv(self.pictures(maps, s), s.pixel_format)
            view = "color" if s.view == "side-by-side" else s.view  # the common cases: depth by table
            planes = levels_to_yuv(self.levels(depth, s), yuv_lut(view, s.colormap, depth.device), s.pixel_format)
            if s.view == "side-by-side":  # only the input's half goes through colour maths
                return side_by_side_yuv420(rgb_to_yuv(resize_u8(maps["image"], (h, w)), "yuv420p"), planes)
            return planes
        return rgb_to_yuv(self.pictures(maps, s), s.pixel_format)


__all__ = ["COLORMAPS", "DisplayRange", "Renderer", "colormap_lut", "depth_u8", "letterbox", "rgb_to_yuv"]
