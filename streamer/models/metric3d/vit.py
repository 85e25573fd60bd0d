"""DINOv2 ViT with register tokens: the Metric3D v2 encoder.

Follows "Vision Transformers Need Registers" (Darcet et al., 2023) as used by Metric3D v2
(YvanYin/Metric3D, mono/model/backbones/ViT_DINO_reg.py). Parameter names match the official
checkpoints (`blocks.0.<i>` comes from its single BlockChunk wrapper).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PATCH_SIZE = 14
POS_GRID = 37  # pos_embed was trained at 518x518 = 37x37 patches
NUM_REGISTERS = 4
INTERPOLATE_OFFSET = 0.1


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, head_dim)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        if ffn == "swiglu":
            # DINOv2's SwiGLUFFNFused: hidden = 2/3 of 4*dim, rounded up to a multiple of 8
            self.mlp: nn.Module = SwiGLUFFN(dim, (int(4 * dim * 2 / 3) + 7) // 8 * 8)
        else:
            self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, D)


class DinoVisionTransformer(nn.Module):
    """Returns four token maps (B, 1 + 4 + h*w, D) for the decoder, and the patch grid (h, w)."""

    def __init__(
        self, embed_dim: int, depth: int, num_heads: int, ffn: str = "mlp", multi_output: bool = False
    ) -> None:
        super().__init__()
        self.multi_output = multi_output
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + POS_GRID * POS_GRID, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, NUM_REGISTERS, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # training only; kept for strict loading
        self.patch_embed = PatchEmbed(embed_dim)
        self.blocks = nn.ModuleList([nn.ModuleList(Block(embed_dim, num_heads, ffn) for _ in range(depth))])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def interpolate_pos_encoding(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        if h == w == POS_GRID:
            return self.pos_embed.to(dtype)
        pos = self.pos_embed.float()
        dim = pos.shape[-1]
        grid = pos[:, 1:].reshape(1, POS_GRID, POS_GRID, dim).permute(0, 3, 1, 2)
        # DINOv2 passes scale factors (with a +0.1 offset), not a size; PyTorch then maps
        # coordinates with these factors, so using size=(h, w) gives different values.
        scale = ((h + INTERPOLATE_OFFSET) / POS_GRID, (w + INTERPOLATE_OFFSET) / POS_GRID)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)
        return torch.cat((pos[:, :1], grid), dim=1).to(dtype)

    def prepare_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        B, _, H, W = x.shape
        if H % PATCH_SIZE or W % PATCH_SIZE:
            size = (math.ceil(H / PATCH_SIZE) * PATCH_SIZE, math.ceil(W / PATCH_SIZE) * PATCH_SIZE)
            x = F.interpolate(x, size, mode="bilinear", align_corners=False)
        h, w = x.shape[2] // PATCH_SIZE, x.shape[3] // PATCH_SIZE
        tokens = torch.cat((self.cls_token.expand(B, -1, -1), self.patch_embed(x)), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(h, w, tokens.dtype)
        registers = self.register_tokens.expand(B, -1, -1)
        return torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1), h, w  # [cls, r0..r3, patches]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        tokens, h, w = self.prepare_tokens(x)
        blocks = self.blocks[0]
        if self.multi_output:
            features = []
            every = len(blocks) // 4
            for i, block in enumerate(blocks):
                tokens = block(tokens)
                if (i + 1) % every == 0:
                    features.append(tokens)  # giant2: raw outputs of blocks 10/20/30/40, no final norm
            return features, (h, w)
        for block in blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return [tokens] * 4, (h, w)
