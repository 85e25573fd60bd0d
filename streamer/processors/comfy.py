"""The same images as the ComfyUI Metric3D node (comfyui_controlnet_aux `Metric3DDetector`).

Its conventions, reproduced on purpose: the depth picture is the last-iteration canonical depth
at model resolution, max-normalised (so fx/fy have no effect), through matplotlib's 'Greys' at
v/1.1 (near = white); the normal picture uses the *first* GRU iteration, 255 - (n*127 + 128);
both are then resized so the short side is `detect_resolution`, and cropped to the depth
picture's size.
"""

from __future__ import annotations

import cv2

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.colors import Normalize

if TYPE_CHECKING:  # a type only: metric3d.py imports this module
    from streamer.processors.metric3d import Letterbox

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
    depths = box.crop(out["depth"][-1][:, 0]).float().cpu().numpy()
    normals = F.interpolate(box.crop(out["normal"][0][:, :3]).float(), box.src_hw, mode="bilinear", align_corners=False)
    normals = normals.permute(0, 2, 3, 1).cpu().numpy()
    pictures = []
    for depth, normal in zip(depths, normals, strict=True):
        depth_pic, normal_pic = greys(depth), normal_picture(normal)
        if detect_resolution:
            th, tw = target_size(depth_pic.shape[:2], detect_resolution)
            depth_pic = resize_short_side(depth_pic, detect_resolution, upscale_method)[:th, :tw]
            normal_pic = resize_short_side(normal_pic, detect_resolution, upscale_method)[:th, :tw]
        pictures.append((np.ascontiguousarray(depth_pic), np.ascontiguousarray(normal_pic)))
    return pictures
