"""`--input-size auto`: the largest model input that keeps a live preview interactive on this machine.

On a GPU that is the official 616x1064. On a CPU the chosen runtime is timed once at 224x392
(the graph it exports there is cached for later runs) and the time scaled to the other sizes by
their token count (attention makes the cost grow a little faster than the tokens: exponent 1.1);
the largest size expected within one frame at INTERACTIVE_FPS wins, else the smallest.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from streamer.models.metric3d.vit import PATCH_SIZE

CANONICAL = (616, 1064)
CANDIDATES = ((616, 1064), (448, 784), (308, 532), (224, 392), (168, 294), (112, 196))  # aspect ~ 16:9
PROBE = (224, 392)
INTERACTIVE_FPS = 8.0
GROWTH = 1.1


def tokens(size: tuple[int, int]) -> int:
    """The ViT's tokens for an input of HxW: one per patch."""
    return (size[0] // PATCH_SIZE) * (size[1] // PATCH_SIZE)


def estimate_ms(probe_ms: float, size: tuple[int, int]) -> float:
    return probe_ms * (tokens(size) / tokens(PROBE)) ** GROWTH


def choose(probe_ms: float, fps: float = INTERACTIVE_FPS) -> tuple[int, int]:
    """The largest candidate expected to run at `fps`, else the smallest."""
    for size in CANDIDATES:
        if estimate_ms(probe_ms, size) <= 1000 / fps:
            return size
    return CANDIDATES[-1]


def time_forward(processor, repeats: int = 2) -> float:
    """Milliseconds a 640x360 frame takes through the stage's network, after one warm-up call."""
    frame = torch.zeros((1, 360, 640, 3), dtype=torch.uint8, device=processor.device)
    processor.forward(frame)  # first calls compile, allocate, pick kernels
    started = time.perf_counter()
    for _ in range(repeats):
        processor.forward(frame)
    if processor.device.type == "cuda":
        torch.cuda.synchronize(processor.device)
    return 1000 * (time.perf_counter() - started) / repeats


def interactive_size(device: torch.device, make: Callable[[tuple[int, int]], object]) -> tuple[object, str]:
    """The processor at the chosen size (`make(size)` builds one), and one line saying what and why."""
    if device.type != "cpu":
        return make(CANONICAL), f"input size auto: {CANONICAL[0]}x{CANONICAL[1]} (the official input, on {device.type})"
    probe = make(PROBE)
    probe_ms = time_forward(probe)
    size = choose(probe_ms)
    processor = probe if size == PROBE else make(size)
    expected = estimate_ms(probe_ms, size)
    return processor, (
        f"input size auto: {size[0]}x{size[1]} (about {expected:.0f} ms a frame with {probe.runtime.name} "
        f"{probe.runtime.precision} here, measured {probe_ms:.0f} ms at {PROBE[0]}x{PROBE[1]}; "
        f"aiming at {INTERACTIVE_FPS:g} fps)"
    )
