"""The same images as the ComfyUI Metric3D node (comfyui_controlnet_aux `Metric3DDetector`).

Its conventions, reproduced on purpose: the depth picture is the last-iteration canonical depth
at model resolution, max-normalised (so fx/fy have no effect), through matplotlib's 'Greys' at
v/1.1 (near = white); the normal picture uses the *first* GRU iteration, 255 - (n*127 + 128);
both are then resized so the short side is `detect_resolution`, and cropped to the depth
picture's size.

The engine makes them on the model's device (`comfy_maps`): the colormap is a table, OpenCV's
resizes are matched (INTER_AREA when shrinking, as exact area-weighted sums; INTER_LINEAR bit-exact;
INTER_CUBIC and INTER_NEAREST through torch's, which use the same kernels), within one level of the
node's pictures. Only the upscale methods torch has no match for (LANCZOS4, AREA when enlarging)
go through OpenCV on the host.
"""

from __future__ import annotations

import cv2

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.colors import Normalize


class Letterbox(Protocol):
    """Where the source image sits in the network's input (metric3d.Letterbox; named here without
    importing metric3d, which imports this module)."""

    src_hw: tuple[int, int]

    def crop(self, x: torch.Tensor) -> torch.Tensor: ...


UPSCALE_METHODS = ("INTER_NEAREST", "INTER_LINEAR", "INTER_AREA", "INTER_CUBIC", "INTER_LANCZOS4")
COMFY_RESOLUTION = 512
COMFY_FOCAL = 1000.0  # the node's fx = fy default; its pictures are max-normalised, so it changes only metres
COMFY_FOCAL_NOTE = "the ComfyUI node's fixed fx = fy = 1000 px (ComfyUI mode): its pictures do not depend on it"


def greys(depth: np.ndarray) -> np.ndarray:
    depth = np.maximum(depth, 0)
    invalid = depth < 1e-10
    v = depth / (depth.max() + 1e-8)
    picture = (colormaps["Greys"](Normalize(vmin=0, vmax=1.1)(v))[:, :, :3] * 255).astype(np.uint8)
    picture[invalid] = 0
    return picture


def normal_picture(normal: np.ndarray) -> np.ndarray:
    unit = normal / (np.sqrt(np.sum(normal**2, axis=2, keepdims=True)) + 1e-8)
    return 255 - (unit * 127 + 128).astype(np.uint8)


def resize_short_side(picture: np.ndarray, resolution: int, method: str) -> np.ndarray:
    """Short side -> resolution (cv2 `method` when enlarging, INTER_AREA when shrinking), then
    edge-padded to multiples of 64, as ControlNet preprocessors do."""
    h, w = picture.shape[:2]
    k = resolution / min(h, w)
    th, tw = int(np.round(h * k)), int(np.round(w * k))
    flag = getattr(cv2, method) if k > 1 else cv2.INTER_AREA
    picture = cv2.resize(picture, (tw, th), interpolation=flag)
    pad = [[0, -th % 64], [0, -tw % 64], [0, 0]]
    return np.pad(picture, pad, mode="edge")


_GREYS: dict[torch.device, torch.Tensor] = {}
_TABLES: dict[tuple, object] = {}
DEVICE_UPSCALES = ("INTER_NEAREST", "INTER_LINEAR", "INTER_CUBIC")


def greys_lut(device: torch.device) -> torch.Tensor:
    """matplotlib's 'Greys' as 256 RGB uint8 entries, as `greys` quantises them."""
    if device not in _GREYS:
        table = (colormaps["Greys"](np.arange(256))[:, :3] * 255).astype(np.uint8)
        _GREYS[device] = torch.from_numpy(table).to(device)
    return _GREYS[device]


def greys_device(depth: torch.Tensor) -> torch.Tensor:
    """`greys` of (N, H, W) float32 depth on its device, per image: (N, H, W, 3) uint8."""
    depth = depth.clamp(min=0)
    peak = depth.flatten(1).amax(1).view(-1, 1, 1) + 1e-8
    x = depth / peak / 1.1 * 256  # Normalize(0, 1.1), then the colormap's N=256 bins, in float32 as numpy
    index = x.floor_().clamp_(0, 255).long()
    picture = greys_lut(depth.device)[index]
    return picture.masked_fill_((depth < 1e-10)[..., None], 0)


def normal_device(normal: torch.Tensor) -> torch.Tensor:
    """`normal_picture` of (N, H, W, 3) float32 normals on their device."""
    unit = normal / (normal.square().sum(dim=-1, keepdim=True).sqrt() + 1e-8)
    return 255 - (unit * 127 + 128).to(torch.uint8)


def cached(key: tuple, make):
    """Tables made once per size and device: made per frame, each would be a host-to-device copy."""
    if key not in _TABLES:
        if len(_TABLES) > 64:
            _TABLES.clear()
        _TABLES[key] = make()
    return _TABLES[key]


def area_weights(src: int, dst: int, device: torch.device) -> torch.Tensor:
    return cached(("area", src, dst, device), lambda: make_area_weights(src, dst, device))


def make_area_weights(src: int, dst: int, device: torch.device) -> torch.Tensor:
    """(dst, src) weights of OpenCV's INTER_AREA shrink: each output pixel averages the input
    pixels it covers, partly covered ones by their covered fraction."""
    scale = src / dst
    start = np.arange(dst) * scale
    edges = np.arange(src + 1)[None, :]
    low = np.clip(
        np.minimum(edges[:, 1:], (start + scale)[:, None]) - np.maximum(edges[:, :-1], start[:, None]), 0, None
    )
    return torch.from_numpy((low / scale).astype(np.float32)).to(device)


def resize_device(pictures: torch.Tensor, hw: tuple[int, int], method: str) -> torch.Tensor | None:
    """(N, H, W, 3) uint8 to `hw` as `resize_short_side` does it with cv2; None where torch has no match."""
    from streamer.processors.resize import LinearResizeU8

    h, w = pictures.shape[1:3]
    if hw == (h, w):
        return pictures
    if hw[0] <= h and hw[1] <= w:  # the node shrinks with INTER_AREA, whatever the method
        x = pictures.float()
        x = torch.einsum("yh,nhwc->nywc", area_weights(h, hw[0], x.device), x)
        x = torch.einsum("xw,nywc->nyxc", area_weights(w, hw[1], x.device), x)
        return x.round_().clamp_(0, 255).to(torch.uint8)
    if method == "INTER_LINEAR":
        return cached(("linear", h, w, hw, pictures.device), lambda: LinearResizeU8((h, w), hw, pictures.device))(
            pictures
        )
    if method not in DEVICE_UPSCALES:
        return None
    mode = "bicubic" if method == "INTER_CUBIC" else "nearest"
    x = F.interpolate(
        pictures.permute(0, 3, 1, 2).float(), hw, mode=mode, **({"align_corners": False} if mode == "bicubic" else {})
    )
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def comfy_maps(
    out: dict[str, list[torch.Tensor]],
    box: Letterbox,
    detect_resolution: int = COMFY_RESOLUTION,
    upscale_method: str = "INTER_CUBIC",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network outputs of every iteration -> the node's (depth, normal) pictures (N, h, w, 3) uint8,
    made on the outputs' device."""
    depth = greys_device(box.crop(out["depth"][-1][:, 0]).float())
    normals = F.interpolate(box.crop(out["normal"][0][:, :3]).float(), box.src_hw, mode="bilinear", align_corners=False)
    normal = normal_device(normals.permute(0, 2, 3, 1))
    if not detect_resolution:
        return depth, normal
    hw = target_size(tuple(depth.shape[1:3]), detect_resolution)
    resized = [resize_device(picture, hw, upscale_method) for picture in (depth, normal)]
    if any(r is None for r in resized):  # LANCZOS4, or AREA when enlarging: OpenCV on the host
        host = [resize_host(p.cpu().numpy(), detect_resolution, upscale_method, hw) for p in (depth, normal)]
        return tuple(torch.from_numpy(h).to(depth.device) for h in host)
    return resized[0], resized[1]


def resize_host(pictures: np.ndarray, resolution: int, method: str, hw: tuple[int, int]) -> np.ndarray:
    return np.stack([resize_short_side(p, resolution, method)[: hw[0], : hw[1]] for p in pictures])


def target_size(hw: tuple[int, int], resolution: int) -> tuple[int, int]:
    k = resolution / min(hw)
    return int(np.round(hw[0] * k)), int(np.round(hw[1] * k))


def comfy_pictures(
    out: dict[str, list[torch.Tensor]],
    box: Letterbox,
    detect_resolution: int = COMFY_RESOLUTION,
    upscale_method: str = "INTER_CUBIC",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Network outputs of every iteration (`all_iterations=True`) -> per image (depth, normal) pictures."""
    depth, normal = comfy_maps(out, box, detect_resolution, upscale_method)
    return list(zip(depth.cpu().numpy(), normal.cpu().numpy(), strict=True))
