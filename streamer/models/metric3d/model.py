"""Metric3D v2: DINOv2-reg ViT encoder + RAFT-DPT decoder, split into `encode` and `decode` stages.

Input: normalised RGB (N, 3, H, W) with H, W multiples of 28 (else the output is a few pixels
smaller, as in the official model). Output: canonical-camera depth (focal 1000 px), confidence and
surface normals at the input size.
"""

from __future__ import annotations

import torch
from torch import nn

from streamer.models.metric3d.decoder import RAFTDepthNormalDPT5
from streamer.models.metric3d.variants import Metric3DVariant, get_variant
from streamer.models.metric3d.vit import DinoVisionTransformer


class Metric3D(nn.Module):
    def __init__(self, variant: Metric3DVariant) -> None:
        super().__init__()
        self.variant = variant
        self.encoder = DinoVisionTransformer(
            variant.embed_dim, variant.depth, variant.num_heads, variant.ffn, variant.multi_output
        )
        self.decoder = RAFTDepthNormalDPT5(
            variant.embed_dim,
            variant.feature_channels,
            variant.decoder_channels,
            variant.hidden_dim,
            variant.gru_iters,
        )

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        return self.encoder(x)

    def decode(
        self, features: list[torch.Tensor], grid: tuple[int, int], all_iterations: bool = False
    ) -> dict[str, list[torch.Tensor]]:
        return self.decoder(features, grid, all_iterations)

    def forward(self, x: torch.Tensor, all_iterations: bool = False) -> dict[str, list[torch.Tensor]]:
        features, grid = self.encode(x)
        return self.decode(features, grid, all_iterations)


def build_metric3d(
    backbone: str = "vit-small", device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Metric3D:
    """Build an uninitialised network (use `device="meta"` to inspect shapes without memory)."""
    with torch.device(device or "cpu"):
        model = Metric3D(get_variant(backbone))
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
