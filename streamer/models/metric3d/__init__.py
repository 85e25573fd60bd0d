"""Metric3D v2 (ViT backbones): network, variants and checkpoint loading."""

from streamer.models.metric3d.model import Metric3D, build_metric3d
from streamer.models.metric3d.variants import BACKBONES, HF_REPO_ID, VARIANTS, get_variant

__all__ = ["BACKBONES", "HF_REPO_ID", "VARIANTS", "Metric3D", "build_metric3d", "get_variant"]
