"""`--processor null`: a stand-in for the model that costs next to nothing.

It turns each frame's brightness into a depth map (and flat normals), so everything around the
model (decode, upload, pictures, download, encode) runs as for real and `streamer bench` can
measure the engine's own ceiling per output format.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamer.focal import Focal

NEAR_M, FAR_M = 0.5, 10.0


class NullStage:
    def __init__(self, device: torch.device, resolution: int | None = None) -> None:
        self.device = device
        self.resolution = resolution
        self.meta = {"processor": "null", "fx": 1000.0, "fy": 1000.0}

    @torch.inference_mode()
    def __call__(
        self,
        images: torch.Tensor,
        wants: set[str] | frozenset[str] = frozenset({"depth"}),
        focal_hint: Focal | None = None,
    ):
        from streamer.processors.metric3d import short_side_size

        green = images[..., 1].float()  # (N, H, W)
        if self.resolution:
            size = short_side_size(tuple(images.shape[1:3]), self.resolution)
            green = F.interpolate(green[:, None], size, mode="bilinear", align_corners=False)[:, 0]
        depth = FAR_M - green * ((FAR_M - NEAR_M) / 255.0)
        maps = {"depth": depth}
        if "normal" in wants:
            normal = torch.zeros((*depth.shape, 3), device=depth.device)
            normal[..., 2] = -1.0  # facing the camera
            maps["normal"] = normal
        for name in ("confidence", "kappa"):
            if name in wants:
                maps[name] = torch.ones_like(depth)
        return maps, dict(self.meta)
