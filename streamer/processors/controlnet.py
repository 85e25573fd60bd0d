"""ControlNet preprocessors from controlnet_aux as pipeline stages (canny, lineart, openpose, ...).

Each detector is loaded once per run (weights through controlnet_aux's own `from_pretrained`
from the Hugging Face hub) and called per frame; its picture is resized to the output size.
"""

from __future__ import annotations

import cv2

import contextlib
import sys
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from streamer.errors import ConfigError, ModelError
from streamer.focal import Focal

AUX_REPO = "lllyasviel/Annotators"


def aux_registry() -> tuple[dict, dict]:
    """controlnet_aux's processor table and default parameters (imported lazily: it is slow)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.processor import MODEL_PARAMS, MODELS
    return MODELS, MODEL_PARAMS


def aux_processor_ids() -> list[str]:
    return list(aux_registry()[0])


@contextlib.contextmanager
def recorded_downloads(module_name: str) -> Iterator[list[tuple[str, str]]]:
    """Note every (repo, filename) a controlnet_aux loader asks the hub for, to name it on failure."""
    module = sys.modules[module_name]
    original = getattr(module, "hf_hub_download", None)
    requested: list[tuple[str, str]] = []
    if original is None:
        yield requested
        return

    def recording(repo_id, filename, *args, **kwargs):
        requested.append((repo_id, filename))
        return original(repo_id, filename, *args, **kwargs)

    module.hf_hub_download = recording
    try:
        yield requested
    finally:
        module.hf_hub_download = original


def load_detector(processor_id: str, weights: str | None = None, local_files_only: bool = False):
    models, _ = aux_registry()
    if processor_id not in models:
        raise ConfigError(f"unknown processor {processor_id!r}", hint=f"choose metric3d or one of: {', '.join(models)}")
    entry = models[processor_id]
    cls = entry["class"]
    if not entry["checkpoint"]:
        return cls()
    source = weights or AUX_REPO
    with recorded_downloads(cls.__module__) as requested:
        try:
            return cls.from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError, RuntimeError) as exc:
            repo, filename = requested[-1] if requested else (AUX_REPO, "its weights")
            raise ModelError(
                f"weights for {processor_id} ({filename}) could not be loaded ({type(exc).__name__})",
                hint=(
                    f"download {filename} from https://huggingface.co/{repo} into a folder and pass "
                    f"--processor-weights FOLDER, or fetch it into the Hugging Face cache with `hf download {repo} {filename}`"
                ),
            ) from exc


class AuxStage:
    """Engine stage around a controlnet_aux detector: frames -> `picture` (N, h, w, 3) uint8."""

    def __init__(
        self,
        detector,
        processor_id: str,
        params: dict | None = None,
        device: torch.device | None = None,
        resolution: int | None = None,
    ) -> None:
        _, defaults = aux_registry()
        self.detector = detector
        self.processor_id = processor_id
        self.params = {**defaults.get(processor_id, {}), **(params or {})}
        self.device = device or torch.device("cpu")
        if hasattr(detector, "to"):
            detector.to(self.device)
        self.resolution = resolution
        self.meta = {"processor": processor_id, "processor_args": self.params}

    def __call__(
        self, images: torch.Tensor, wants: set[str] | frozenset[str] = frozenset(), focal_hint: Focal | None = None
    ) -> tuple[dict, dict]:
        """`wants` is ignored: a preprocessor makes one picture, whatever the sinks read."""
        from streamer.processors.metric3d import short_side_size

        frames = images.cpu().numpy()
        src_hw = frames.shape[1:3]
        out_h, out_w = short_side_size(src_hw, self.resolution) if self.resolution else src_hw
        pictures = []
        for frame in frames:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                picture = np.asarray(self.detector(frame, output_type="np", **self.params))
            if picture.ndim == 2:
                picture = np.repeat(picture[:, :, None], 3, axis=2)
            if picture.shape[:2] != (out_h, out_w):
                picture = cv2.resize(picture, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
            pictures.append(picture.astype(np.uint8))
        return {"picture": torch.from_numpy(np.stack(pictures)).to(images.device)}, dict(self.meta)
