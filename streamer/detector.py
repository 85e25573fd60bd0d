"""`Metric3DDetector`: our Metric3D behind the controlnet_aux detector interface.

Drop-in for comfyui_controlnet_aux's detector (the node this tool comes from): same
`from_pretrained` / `to` / `__call__` signatures and return conventions, same images
(see processors/comfy.py), with the model kept resident between calls.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from streamer.api import load_model
from streamer.errors import ModelError
from streamer.models.metric3d import HF_REPO_ID
from streamer.processors.comfy import UPSCALE_METHODS, comfy_pictures
from streamer.processors.metric3d import Metric3DProcessor


def hwc3(image: np.ndarray) -> np.ndarray:
    """Gray -> RGB, RGBA -> RGB over white (controlnet_aux's HWC3)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        return np.concatenate([image] * 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        return (image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    return image


class Metric3DDetector:
    def __init__(self, model) -> None:
        self.model = model
        self.processor = Metric3DProcessor(model)
        self.device = self.processor.device

    @classmethod
    def from_pretrained(
        cls, pretrained_model_or_path: str = HF_REPO_ID, filename: str = "metric_depth_vit_small_800k.pth", **kwargs
    ) -> Metric3DDetector:
        """A Hugging Face repo id, a folder holding `filename`, or a checkpoint file."""
        match = re.search(r"metric_depth_vit_(small|large|giant2)_", filename)
        if match is None:
            raise ModelError(
                f"cannot tell the backbone from {filename!r}", hint="use an official metric_depth_vit_*_800k.pth name"
            )
        path = Path(pretrained_model_or_path)
        if path.is_dir():
            path = path / filename
        elif not path.is_file():
            from huggingface_hub import hf_hub_download

            path = Path(
                hf_hub_download(
                    pretrained_model_or_path, filename, local_files_only=kwargs.get("local_files_only", False)
                )
            )
        model, _ = load_model(f"vit-{match.group(1)}", path, device="cpu", precision="fp32")
        return cls(model)

    def to(self, device: str | torch.device) -> Metric3DDetector:
        self.model.to(device)
        self.processor = Metric3DProcessor(self.model)
        self.device = self.processor.device
        return self

    def __call__(
        self,
        input_image,
        detect_resolution: int = 512,
        fx: float = 1000,
        fy: float = 1000,
        output_type: str | None = None,
        upscale_method: str = "INTER_CUBIC",
        depth_and_normal: bool = True,
        **kwargs,
    ):
        """RGB image (HWC uint8 array or PIL) -> depth picture, or (depth, normal) pictures.

        As in comfyui_controlnet_aux, fx/fy do not change these max-normalised pictures; use
        `streamer.DepthEstimator` for metric depth. A PIL input gives PIL outputs by default.
        """
        if upscale_method not in UPSCALE_METHODS:
            raise ValueError(f"upscale_method must be one of {UPSCALE_METHODS}")
        if not isinstance(input_image, np.ndarray):
            input_image = np.array(input_image, dtype=np.uint8)
            output_type = output_type or "pil"
        output_type = output_type or "np"
        images = torch.from_numpy(np.array(hwc3(input_image), dtype=np.uint8))[None].to(self.device)
        out, box = self.processor.forward(images, all_iterations=True)
        ((depth, normal),) = comfy_pictures(out, box, detect_resolution, upscale_method)
        if output_type == "pil":
            depth, normal = Image.fromarray(depth), Image.fromarray(normal)
        return (depth, normal) if depth_and_normal else depth
