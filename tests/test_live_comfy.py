"""The ComfyUI node's pictures made on the model's device match the node's own numpy/OpenCV
recipe (kept in streamer/processors/comfy.py as `greys`, `normal_picture`, `resize_short_side`)
within one level, for shrinking and every upscale method; no host round trip on the model thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streamer.processors.comfy import (
    UPSCALE_METHODS,
    comfy_maps,
    greys,
    normal_picture,
    resize_short_side,
    target_size,
)
from streamer.processors.metric3d import Letterbox

SRC_HW, INPUT_HW = (45, 70), (56, 84)


def network_outputs(seed: int) -> tuple[dict, Letterbox]:
    """Two iterations of depth and normal maps at the canonical size, with an invalid (zero) patch."""
    gen = torch.Generator().manual_seed(seed)
    depth = F.avg_pool2d(torch.rand((2, 1, *INPUT_HW), generator=gen) * 9, 5, 1, 2)  # smooth, like depth
    depth[0, 0, 10:20, 10:20] = 0
    normal = torch.randn((2, 4, *INPUT_HW), generator=gen)
    return {"depth": [depth * 0.5, depth], "normal": [normal, normal * 2]}, Letterbox.fit(SRC_HW, INPUT_HW)


def reference(out: dict, box: Letterbox, resolution: int, method: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The node's recipe on the host, as comfy.py had it before it moved to the device."""
    depths = box.crop(out["depth"][-1][:, 0]).float().numpy()
    normals = F.interpolate(box.crop(out["normal"][0][:, :3]).float(), box.src_hw, mode="bilinear", align_corners=False)
    pictures = []
    for depth, normal in zip(depths, normals.permute(0, 2, 3, 1).numpy(), strict=True):
        depth_pic, normal_pic = greys(depth), normal_picture(normal)
        th, tw = target_size(depth_pic.shape[:2], resolution)
        pictures.append(
            (
                resize_short_side(depth_pic, resolution, method)[:th, :tw],
                resize_short_side(normal_pic, resolution, method)[:th, :tw],
            )
        )
    return pictures


@pytest.mark.parametrize("resolution", [24, 45, 128])  # shrink (INTER_AREA), same size, enlarge
@pytest.mark.parametrize("method", UPSCALE_METHODS)
def test_device_pictures_match_the_node_within_one_level(resolution, method):
    out, box = network_outputs(resolution)
    depth, normal = comfy_maps(out, box, resolution, method)
    for i, (want_depth, want_normal) in enumerate(reference(out, box, resolution, method)):
        assert depth[i].shape == want_depth.shape and normal[i].shape == want_normal.shape
        assert np.abs(depth[i].numpy().astype(int) - want_depth).max() <= 1
        assert np.abs(normal[i].numpy().astype(int) - want_normal).max() <= 1
    assert (depth[0].numpy() == 0).any()  # invalid depth stays black


def test_the_common_methods_stay_on_the_device(monkeypatch):
    """INTER_CUBIC (the node's default), shrinking and INTER_LINEAR never copy a picture to the host."""
    out, box = network_outputs(0)
    monkeypatch.setattr(torch.Tensor, "numpy", lambda self, *a, **k: pytest.fail("a picture went to the host"))
    for resolution, method in ((128, "INTER_CUBIC"), (24, "INTER_CUBIC"), (128, "INTER_LINEAR")):
        comfy_maps(out, box, resolution, method)
