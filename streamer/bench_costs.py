"""Costs `streamer bench` measures apart from the engine's runs: the depth stabiliser per mode at
the bench's source size, and the keyed view's two effects at 720p. Medians of timed calls, the
device synchronised after each (benchmarks/stabilize.py and benchmarks/effects.py use them too).
"""

from __future__ import annotations

import statistics
import time

import torch

from streamer.effect_settings import EffectSettings
from streamer.processors.effects import Keyer
from streamer.processors.stabilize import Stabilizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stabilizer_cost(device: torch.device | str, mode: str, size: tuple[int, int], frames: int) -> tuple[float, float]:
    """Median and best seconds per `Stabilizer.push` for (H, W) frames, after two warm-up frames.

    Medians shrug off a busy machine; on CUDA each push is timed to the end of its device work.
    The depth's scale jitters from frame to frame, as a model's does.
    """
    gen = torch.Generator().manual_seed(0)
    h, w = size
    base = 2 + 4 * torch.rand(h, w, generator=gen)
    depths = [(base * (1 + 0.02 * i)).to(device) for i in range(3)]
    confidence = torch.rand(h, w, generator=gen).to(device)
    images = [torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).to(device) for _ in range(2)]
    stab = Stabilizer(mode)
    for i in range(2):
        stab.push(depths[i], confidence, images[i])
    times = []
    for i in range(frames):
        sync(torch.device(device))
        start = time.perf_counter()
        stab.push(depths[i % 3], confidence, images[i % 2])
        sync(torch.device(device))
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def stabilizer_ms(device: torch.device, source_size: tuple[int, int], frames: int) -> dict[str, float]:
    """Milliseconds per frame (median) of each stabiliser mode at the bench's source size (W, H)."""
    w, h = source_size
    return {mode: 1000 * stabilizer_cost(device, mode, (h, w), frames)[0] for mode in ("causal", "lookahead")}


EFFECTS_SIZE = (1280, 720)  # the keyed view's costs are measured at 720p whatever the source size


def effects_ms(device: torch.device, frames: int, size: tuple[int, int] = EFFECTS_SIZE) -> dict[str, float]:
    """Milliseconds per frame (median) of the keyed view's two costs at 1280x720, on the device:
    the key (band, hysteresis, guided edge, blurred background) and the depth of field."""
    gen = torch.Generator().manual_seed(0)
    w, h = size
    images = torch.randint(0, 256, (1, h, w, 3), generator=gen, dtype=torch.uint8).to(device)
    depth = (0.5 + 4 * torch.rand(1, h // 16, w // 16, generator=gen)).to(device)
    depth = torch.nn.functional.interpolate(depth[:, None], (h, w), mode="bilinear", align_corners=False)[:, 0]
    cases = {"key": EffectSettings(0.0, 2.0, "blur"), "depth_of_field": EffectSettings(background="none", focus=1.2)}
    out = {}
    for name, settings in cases.items():
        keyer, times = Keyer(), []
        for i in range(max(frames, 5) + 2):
            sync(device)
            start = time.perf_counter()
            keyer(images, depth, settings, 1000.0, alpha_out=False)
            sync(device)
            if i >= 2:  # two warm-up frames
                times.append(time.perf_counter() - start)
        out[name] = 1000 * statistics.median(times)
    return out
