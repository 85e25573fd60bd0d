"""The Python API: load the model once, open a source and sinks, run the pipeline.

from streamer import Config, open_source, load_stage, run_pipeline
from streamer.sinks import VideoSink
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from streamer.config import Config, ModelConfig, describe_validation_error
from streamer.engine.device import resolve_device, resolve_dtype
from streamer.engine.pipeline import Pipeline
from streamer.engine.stats import Stats
from streamer.errors import ConfigError
from streamer.models.metric3d import Metric3D, build_metric3d
from streamer.models.metric3d.weights import load_weights, read_checkpoint, resolve_checkpoint
from streamer.processors.comfy import COMFY_RESOLUTION
from streamer.processors.controlnet import AuxStage, load_detector
from streamer.processors.metric3d import Metric3DProcessor, Metric3DStage, short_side_size
from streamer.types import Result


def load_model(
    backbone: str = "vit-small",
    checkpoint: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    local_files_only: bool = False,
    compile: bool = False,
) -> tuple[Metric3D, Path]:
    """Build Metric3D, load its weights strictly, move it to the device in the chosen precision."""
    path = resolve_checkpoint(backbone, checkpoint, local_files_only)
    model = build_metric3d(backbone, device="meta")
    load_weights(model, read_checkpoint(path), source=str(path))
    return place_model(model, device, precision, compile), path


def place_model(model: Metric3D, device: str = "auto", precision: str = "auto", compile: bool = False) -> Metric3D:
    """Loaded weights -> the device and precision to run in (auto: fp16 on CUDA, fp32 on CPU)."""
    dev = resolve_device(device)
    model = model.to(device=dev, dtype=resolve_dtype(precision, dev)).eval()
    return torch.compile(model) if compile else model


def load_processor(cfg: ModelConfig) -> tuple[Metric3DProcessor, dict]:
    model, path = load_model(cfg.backbone, cfg.checkpoint, cfg.device, cfg.precision, cfg.local_files_only, cfg.compile)
    processor = Metric3DProcessor(model, cfg.input_size, cfg.focal_mode)
    meta = {
        "processor": "metric3d",
        "backbone": cfg.backbone,
        "checkpoint": Path(path).name,
        "input_size": list(cfg.input_size),
        "precision": str(processor.dtype).removeprefix("torch."),
        "focal_mode": cfg.focal_mode,
        "device": str(processor.device),
    }
    return processor, meta


def load_stage(cfg: ModelConfig, comfy: bool = False) -> Metric3DStage | AuxStage:
    """The inference stage the pipeline runs, with the model loaded once.

    `comfy` adds the ComfyUI node's pictures; `resolution` then defaults to the node's 512.
    Any other `processor` than metric3d loads that controlnet_aux preprocessor.
    """
    if cfg.processor != "metric3d":
        weights = str(cfg.processor_weights) if cfg.processor_weights else None
        detector = load_detector(cfg.processor, weights, cfg.local_files_only)
        return AuxStage(detector, cfg.processor, cfg.processor_args, resolve_device(cfg.device), cfg.resolution)
    processor, meta = load_processor(cfg)
    comfy_resolution = (cfg.resolution or COMFY_RESOLUTION) if comfy else None
    resolution = None if comfy else cfg.resolution
    return Metric3DStage(processor, cfg.focal_for, resolution, meta, comfy_resolution)


def make_pipeline(source, stage, sinks: list, config: Config | None = None, stats: Stats | None = None) -> Pipeline:
    engine = (config or Config()).engine
    return Pipeline(
        source, stage, sinks, engine.batch_size, engine.queue_size, engine.pinned_memory, engine.cuda_stream, stats
    )


def run_pipeline(source, stage, sinks: list, config: Config | None = None, stats: Stats | None = None) -> dict:
    """Run source -> stage -> sinks to the end; returns the statistics (fps, latency, drops...)."""
    return make_pipeline(source, stage, sinks, config, stats).run()


class DepthEstimator:
    """Metric depth for single RGB images: `DepthEstimator().predict(rgb, fx=..., fy=...)`.

    Returns float32 arrays at the image's own size: `depth` (m), `normal` (H, W, 3),
    `kappa` and `confidence`, plus the fx and fy used.
    """

    def __init__(self, config: ModelConfig | None = None, **overrides) -> None:
        base = (config or ModelConfig()).model_dump()
        try:
            self.config = ModelConfig.model_validate({**base, **overrides})
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None
        self.processor, self.meta = load_processor(self.config)

    def predict(self, rgb: np.ndarray, fx: float | None = None, fy: float | None = None) -> dict[str, np.ndarray]:
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError("expected an RGB uint8 array of shape (H, W, 3)")
        cfg_fx, cfg_fy = self.config.focal_for(rgb.shape[1])
        fx, fy = fx or cfg_fx, fy or cfg_fy
        out_hw = short_side_size(rgb.shape[:2], self.config.resolution) if self.config.resolution else None
        images = torch.from_numpy(np.ascontiguousarray(rgb))[None].to(self.processor.device)
        maps = self.processor(images, fx, fy, out_hw)
        out = {k: v[0].cpu().numpy() for k, v in maps.items()}
        out.update(fx=np.float32(fx), fy=np.float32(fy))
        return out


__all__ = [
    "DepthEstimator",
    "Result",
    "load_model",
    "load_processor",
    "place_model",
    "load_stage",
    "make_pipeline",
    "run_pipeline",
]
