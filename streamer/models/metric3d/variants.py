"""The three released Metric3D v2 ViT variants as data (YvanYin/Metric3D, mono/configs/HourglassDecoder)."""

from __future__ import annotations

from dataclasses import dataclass

HF_REPO_ID = "JUGGHM/Metric3D"


@dataclass(frozen=True)
class Metric3DVariant:
    name: str
    checkpoint_file: str
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str  # "mlp" (exact-GELU MLP) or "swiglu"
    multi_output: bool  # giant2 hands 4 intermediate blocks to the decoder, the others the last one 4x
    feature_channels: tuple[int, int, int, int]
    decoder_channels: tuple[int, int, int, int, int]
    hidden_dim: int
    gru_iters: int


VARIANTS: dict[str, Metric3DVariant] = {
    v.name: v
    for v in (
        Metric3DVariant(
            "vit-small",
            "metric_depth_vit_small_800k.pth",
            384,
            12,
            6,
            "mlp",
            False,
            (96, 192, 384, 768),
            (48, 96, 192, 384, 384),
            48,
            4,
        ),
        Metric3DVariant(
            "vit-large",
            "metric_depth_vit_large_800k.pth",
            1024,
            24,
            16,
            "mlp",
            False,
            (256, 512, 1024, 1024),
            (128, 256, 512, 1024, 1024),
            128,
            8,
        ),
        Metric3DVariant(
            "vit-giant2",
            "metric_depth_vit_giant2_800k.pth",
            1536,
            40,
            24,
            "swiglu",
            True,
            (384, 768, 1536, 1536),
            (192, 384, 768, 1536, 1536),
            192,
            8,
        ),
    )
}

BACKBONES: tuple[str, ...] = tuple(VARIANTS)


def get_variant(name: str) -> Metric3DVariant:
    """Look up a backbone by name; accepts the node's spelling (vit-small) and the file's (vit_small)."""
    key = name.strip().lower().replace("_", "-")
    if key not in VARIANTS:
        from streamer.errors import ConfigError

        raise ConfigError(f"unknown backbone {name!r}", hint=f"choose one of: {', '.join(BACKBONES)}")
    return VARIANTS[key]
