"""Metric depth for single images in memory, with the model loaded once (no streams, no sinks)."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import ValidationError

from streamer.api import focal_resolver, load_processor
from streamer.config import ModelConfig, describe_validation_error
from streamer.engine import worker
from streamer.errors import ConfigError
from streamer.processors.metric3d import short_side_size


class DepthEstimator:
    """Metric depth for single RGB images: `DepthEstimator().predict(rgb, fx=..., fy=...)`.

    Returns float32 arrays at the image's own size: `depth` (m), `normal` (H, W, 3),
    `kappa` and `confidence`, plus the fx and fy used. Without fx/fy (here or in the config) a
    field of view is assumed and a warning logged once: pass the camera's focal for true metres.
    """

    def __init__(self, config: ModelConfig | None = None, **overrides) -> None:
        base = (config or ModelConfig()).model_dump()
        try:
            self.config = ModelConfig.model_validate({**base, **overrides})
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None
        self.processor, self.meta = worker.on_device_thread(load_processor, self.config)
        self.focal = focal_resolver(self.config)

    def predict(self, rgb: np.ndarray, fx: float | None = None, fy: float | None = None) -> dict[str, np.ndarray]:
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError("expected an RGB uint8 array of shape (H, W, 3)")
        if fx is None and fy is None:
            focal = self.focal(rgb.shape[1], rgb.shape[0])
            fx, fy = focal.fx, focal.fy
        fx, fy = fx or fy, fy or fx
        out_hw = short_side_size(rgb.shape[:2], self.config.resolution) if self.config.resolution else None
        images = torch.from_numpy(np.ascontiguousarray(rgb))[None].to(self.processor.device)
        maps = worker.on_device_thread(self.processor, images, fx, fy, out_hw)
        out = {k: v[0].cpu().numpy() for k, v in maps.items()}
        out.update(fx=np.float32(fx), fy=np.float32(fy))
        return out
