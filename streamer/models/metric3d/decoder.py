"""RAFT-DPT depth-normal decoder of Metric3D v2 (`RAFTDepthNormalDPT5`).

Follows YvanYin/Metric3D, mono/model/decode_heads/RAFTDepthNormalDPTDecoder5.py (Hu et al.,
"Metric3D v2", 2024): DPT-style token readout and fusion, a depth-bin regressor and a normal
head at 1/4 resolution, then a 3-level ConvGRU refinement with convex x4 upsampling.
Parameter names match the official checkpoints.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from streamer.models.metric3d.vit import NUM_REGISTERS

DEPTH_MIN, DEPTH_MAX = 0.1, 200.0  # canonical-camera depth range, also the bin range
REGRESS_SCALE = 100.0
NUM_BINS = 256
UPSAMPLE = 4  # convex upsampling factor (n_downsample = 2)


def resize_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, ref.shape[2:], mode="bilinear", align_corners=True)


def pool2x(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=2, padding=1)


def normalize_normal(normal_out: torch.Tensor) -> torch.Tensor:
    """(N, 4, H, W) raw normal + kappa logit -> unit normal + kappa = elu(k) + 1.01."""
    n, kappa = normal_out[:, :3], normal_out[:, 3:]
    n = n / (torch.linalg.vector_norm(n, dim=1, keepdim=True) + 1e-10)
    return torch.cat((n, F.elu(kappa) + 1.01), dim=1)


class Readout(nn.Module):
    """Patch tokens plus a projection of [cls, registers] broadcast to every patch, then GELU."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project_patch = nn.Linear(dim, dim)
        self.project_learn = nn.Linear((1 + NUM_REGISTERS) * dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, _, D = tokens.shape
        patches = tokens[:, 1 + NUM_REGISTERS :].reshape(B, h, w, D)
        learned = tokens[:, : 1 + NUM_REGISTERS].reshape(B, 1, 1, (1 + NUM_REGISTERS) * D)
        x = F.gelu(self.project_patch(patches) + self.project_learn(learned))
        return x.permute(0, 3, 1, 2).contiguous()  # (B, D, h, w)


class Token2Feature(nn.Module):
    """Readout, then resampling to the level's scale: 1 (identity), 2 (transposed conv) or 3.5."""

    def __init__(self, dim: int, out_channels: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.readoper = Readout(dim)
        if scale == 2:
            self.sample: nn.Module = nn.ConvTranspose2d(dim, out_channels, kernel_size=2, stride=2)
        elif scale == 3.5:
            self.sample = nn.Sequential(nn.Conv2d(dim, out_channels, kernel_size=1))
        else:
            self.sample = nn.Identity()

    def forward(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.readoper(tokens, h, w)
        if self.scale == 3.5:
            x = F.interpolate(x, scale_factor=3.5, mode="nearest")
        return self.sample(x)


class EncoderFeature(nn.Module):
    def __init__(self, dim: int, feature_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.read_3 = Token2Feature(dim, feature_channels[3], 1)
        self.read_2 = Token2Feature(dim, feature_channels[2], 1)
        self.read_1 = Token2Feature(dim, feature_channels[1], 2)
        self.read_0 = Token2Feature(dim, feature_channels[0], 3.5)

    def forward(self, features: list[torch.Tensor], h: int, w: int) -> list[torch.Tensor]:
        """-> [1/14, 1/14, 1/7, 1/4] feature maps."""
        reads = (self.read_3, self.read_2, self.read_1, self.read_0)
        return [read(f, h, w) for read, f in zip(reads, features[::-1], strict=True)]


class ConvBlock(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, added to relu(x).

    The official block applies an in-place ReLU to its input, so the residual is relu(x), not x.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class FuseBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, fuse: bool = True, scale: float | None = 2.0) -> None:
        super().__init__()
        self.scale = scale
        self.way_trunk = ConvBlock(in_ch)
        if fuse:
            self.way_branch = ConvBlock(in_ch)
        self.out_conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.way_branch(skip)
        x = self.way_trunk(x)
        if self.scale is not None:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DecoderFeature(nn.Module):
    def __init__(self, dc: tuple[int, ...]) -> None:
        super().__init__()
        self.upconv_3 = FuseBlock(dc[4], dc[3], fuse=False, scale=None)
        self.upconv_2 = FuseBlock(dc[3], dc[2])
        self.upconv_1 = FuseBlock(dc[2], dc[1] + 2, scale=7 / 4)

    def forward(self, f14a: torch.Tensor, f14b: torch.Tensor, f7: torch.Tensor) -> torch.Tensor:
        x = self.upconv_3(f14a)  # 1/14
        x = self.upconv_2(x, f14b)  # 1/7
        return self.upconv_1(x, f7)  # 1/4, dc1 + 2 channels


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm1 = LayerNorm2d(out_ch)
        self.norm2 = LayerNorm2d(out_ch)
        # One module under two names: the checkpoints store it as both norm3 and downsample.1.
        self.norm3 = LayerNorm2d(out_ch)
        self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu(self.downsample(x) + y)


def context_head(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(in_ch, out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1))


class ContextFeatureEncoder(nn.Module):
    """Per level (1/4, 1/7, 1/14): a hidden-state head and a context head."""

    def __init__(self, in_channels: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        self.outputs04 = nn.ModuleList(context_head(in_channels[0], hidden) for _ in range(2))
        self.outputs08 = nn.ModuleList(context_head(in_channels[1], hidden) for _ in range(2))
        self.outputs16 = nn.ModuleList(context_head(in_channels[2], hidden) for _ in range(2))

    def forward(self, f4: torch.Tensor, f7: torch.Tensor, f14: torch.Tensor):
        levels = ((self.outputs04, f4), (self.outputs08, f7), (self.outputs16, f14))
        return [[head(x) for head in heads] for heads, x in levels]


class ConvGRU(nn.Module):
    def __init__(self, hidden: int, input_dim: int) -> None:
        super().__init__()
        self.convz = nn.Conv2d(hidden + input_dim, hidden, 3, padding=1)
        self.convr = nn.Conv2d(hidden + input_dim, hidden, 3, padding=1)
        self.convq = nn.Conv2d(hidden + input_dim, hidden, 3, padding=1)

    def forward(self, h: torch.Tensor, context: tuple[torch.Tensor, ...], *inputs: torch.Tensor):
        cz, cr, cq = context
        x = torch.cat(inputs, dim=1)
        hx = torch.cat((h, x), dim=1)
        z = torch.sigmoid(self.convz(hx) + cz)
        r = torch.sigmoid(self.convr(hx) + cr)
        q = torch.tanh(self.convq(torch.cat((r * h, x), dim=1)) + cq)
        return (1 - z) * h + z * q


class FlowHead(nn.Module):
    """Deltas of the 6-channel state: 2 for depth (+confidence), 4 for normal (+kappa)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.conv1d = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv2d = nn.Conv2d(hidden, 2, 3, padding=1)
        self.conv1n = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv2n = nn.Conv2d(hidden, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = self.conv2d(F.relu(self.conv1d(x)))
        normal = self.conv2n(F.relu(self.conv1n(x)))
        return torch.cat((depth, normal), dim=1)


STATE_CHANNELS = 6  # [depth, depth confidence, nx, ny, nz, kappa]


class UpdateBlock(nn.Module):
    """Three ConvGRUs at 1/4 (gru08), 1/7 (gru16) and 1/14 (gru32), plus the state and mask heads."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gru08 = ConvGRU(hidden, STATE_CHANNELS + hidden)
        self.gru16 = ConvGRU(hidden, 2 * hidden)
        self.gru32 = ConvGRU(hidden, hidden)
        self.flow_head = FlowHead(hidden)
        self.mask = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, UPSAMPLE * UPSAMPLE * 9, 1),
        )

    def gru_low(self, net: list[torch.Tensor], ctx) -> None:
        net[2] = self.gru32(net[2], ctx[2], pool2x(net[1]))

    def gru_mid(self, net: list[torch.Tensor], ctx) -> None:
        net[1] = self.gru16(net[1], ctx[1], resize_like(pool2x(net[0]), net[1]), resize_like(net[2], net[1]))

    def forward(self, net: list[torch.Tensor], ctx, state: torch.Tensor):
        """One refinement step ("slow-fast": the coarse GRUs run 3x and 2x per step)."""
        self.gru_low(net, ctx)
        self.gru_low(net, ctx)
        self.gru_mid(net, ctx)
        self.gru_low(net, ctx)
        self.gru_mid(net, ctx)
        net[0] = self.gru08(net[0], ctx[0], state, resize_like(net[1], net[0]))
        return self.flow_head(net[0]), 0.25 * self.mask(net[0])


def convex_upsample(state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) state, (N, 144, h, w) mask -> (N, C, 4h, 4w) as a learned 3x3 convex combination."""
    N, C, h, w = state.shape
    mask = mask.view(N, 1, 9, UPSAMPLE, UPSAMPLE, h, w).softmax(dim=2)
    patches = F.unfold(state, [3, 3], padding=1).view(N, C, 9, 1, 1, h, w)
    up = (mask * patches).sum(dim=2)  # (N, C, 4, 4, h, w)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(N, C, UPSAMPLE * h, UPSAMPLE * w)


class RAFTDepthNormalDPT5(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        feature_channels: tuple[int, ...],
        decoder_channels: tuple[int, ...],
        hidden: int,
        iters: int,
    ) -> None:
        super().__init__()
        self.iters = iters
        dc1 = decoder_channels[1]
        self.token2feature = EncoderFeature(embed_dim, feature_channels)
        self.decoder_mono = DecoderFeature(decoder_channels)
        self.depth_regressor = nn.Sequential(
            nn.Conv2d(dc1, NUM_BINS, 3, padding=1), nn.ReLU(), nn.Conv2d(NUM_BINS, NUM_BINS, 1)
        )
        self.normal_predictor = nn.Sequential(
            nn.Conv2d(dc1, 128, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, 128, 1),
            nn.ReLU(),
            nn.Conv2d(128, 128, 1),
            nn.ReLU(),
            nn.Conv2d(128, 3, 1),
        )
        self.context_feature_encoder = ContextFeatureEncoder(feature_channels, hidden)
        self.context_zqr_convs = nn.ModuleList(nn.Conv2d(hidden, 3 * hidden, 3, padding=1) for _ in range(3))
        self.update_block = UpdateBlock(hidden)

    def initial_state(self, feature: torch.Tensor) -> torch.Tensor:
        """(N, dc1 + 2, h4, w4) fused 1/4 map -> (N, 6, h4, w4) initial state, float32."""
        shared, depth_conf, normal_logit = feature[:, :-2], feature[:, -2:-1], feature[:, -1:]
        prob = self.depth_regressor(shared).float().softmax(dim=1)
        bins = torch.linspace(
            math.log(DEPTH_MIN), math.log(DEPTH_MAX), NUM_BINS, device=prob.device, dtype=torch.float32
        ).exp()
        depth = torch.einsum("nkhw,k->nhw", prob, bins).unsqueeze(1).clamp(DEPTH_MIN, DEPTH_MAX)
        depth_state = (depth - DEPTH_MAX) / REGRESS_SCALE
        normal = normalize_normal(torch.cat((self.normal_predictor(shared), normal_logit), dim=1))
        return torch.cat((depth_state, depth_conf.float(), normal.float()), dim=1)

    def forward(
        self, features: list[torch.Tensor], grid: tuple[int, int], all_iterations: bool = False
    ) -> dict[str, list[torch.Tensor]]:
        """Depth (N,1,H,W) canonical metres, confidence (N,1,H,W), normal + kappa (N,4,H,W).

        Lists hold the last GRU iteration only, or every iteration with `all_iterations`.
        """
        h, w = grid
        f14a, f14b, f7, f4 = self.token2feature(features, h, w)
        fused = self.decoder_mono(f14a, f14b, f7)
        state = self.initial_state(fused)
        # The official ConvBlock ReLUs its input in place, so the context encoder sees ReLU'd
        # 1/7 and 1/14 maps (the 1/4 map never passes a ConvBlock).
        ctx_maps = self.context_feature_encoder(f4, F.relu(f7), F.relu(f14b))
        net = [torch.tanh(hidden) for hidden, _ in ctx_maps]
        ctx = [
            conv(F.relu(context)).chunk(3, dim=1)
            for (_, context), conv in zip(ctx_maps, self.context_zqr_convs, strict=True)
        ]
        # The state and its upsampling stay float32 under half precision: the state accumulates
        # deltas over the iterations, and bf16 steps near |s| = 1 are 0.008, i.e. 0.8 m of depth.
        depths, confidences, normals = [], [], []
        for i in range(self.iters):
            delta, mask = self.update_block(net, ctx, state.to(fused.dtype))
            state = state + delta.float()
            if not all_iterations and i < self.iters - 1:
                continue
            up = convex_upsample(state, mask.float())
            depths.append((up[:, :1] * REGRESS_SCALE + DEPTH_MAX).clamp(DEPTH_MIN, DEPTH_MAX))
            confidences.append(up[:, 1:2])
            normals.append(normalize_normal(up[:, 2:]))
        return {"depth": depths, "confidence": confidences, "normal": normals}
