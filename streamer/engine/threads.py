"""CPU threads for decoding, the model and encoding, sized together for the run.

Left alone, the decoder, the encoder and torch each start a thread per core and oversubscribe
the machine. An OpenMP team is as slow as its slowest thread: when an encoder thread takes a
core from one of torch's threads, every parallel op waits for it. Which way to share the cores
depends on what a frame costs, so on the CPU the budget is decided from the run itself:

    the model gets every core when one forward at the run's input size (timed on the model
    thread after loading, with every core) costs at least MODEL_DOMINATES (4) times the
    codecs' estimated work per frame (H.264 decode at the source size + encode at the output
    size); the codecs then share the cores with it (the OS schedules them). Otherwise the
    codecs keep a quarter of the cores (at least one) and torch takes the rest.

Measured on 2 cores: vit-small at 56x112 with a 1080p source (forward ~110 ms against ~55 ms of
codecs) runs 1.2x the serial loop with a core kept for the codecs and 0.92x with torch on both;
at 224x392 with a 640x360 source (forward ~460 ms against ~6 ms) one torch thread made the
pipeline 0.85x of model-only speed. With `--threads N` nothing is measured: torch gets N less
the codecs' quarter. On a GPU the model needs one or two host threads and the codecs get the cores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

MODEL_DOMINATES = 4.0  # forward / codec work per frame at or above which torch gets every core
# H.264 per pixel, one thread each, measured at 1080p on the 2-core CPU (benchmarks/README.md):
# decode 8.9 ms and encode 46 ms a frame. The model is timed on the same machine, so the ratio holds.
DECODE_NS_PER_PIXEL = 4.3
ENCODE_NS_PER_PIXEL = 22.0


@dataclass(frozen=True)
class ThreadBudget:
    torch: int
    decode: int
    encode: int
    reason: str = "fixed split"

    @classmethod
    def plan(
        cls,
        device_type: str,
        total: int | None = None,
        model_ms: float | None = None,
        codec_ms: float | None = None,
    ) -> ThreadBudget:
        """The split for `total` cores (default: all); on the CPU, `model_ms` (one forward, all
        cores) against `codec_ms` (decode + encode a frame) decides whether torch takes them all."""
        cores = max(1, total or os.cpu_count() or 1)
        if device_type != "cpu":
            decode = max(1, cores // 3)
            return cls(torch=min(2, cores), decode=decode, encode=max(1, cores - decode - 1), reason="GPU")
        codecs = max(1, cores // 4)
        if model_ms is None or codec_ms is None:
            return cls(torch=max(1, cores - codecs), decode=codecs, encode=codecs)
        ratio = model_ms / max(codec_ms, 1e-3)
        why = f"forward {model_ms:.0f} ms = {ratio:.1f}x codecs {codec_ms:.1f} ms"
        if ratio >= MODEL_DOMINATES:
            return cls(torch=cores, decode=codecs, encode=codecs, reason=f"{why}: the model takes every core")
        return cls(max(1, cores - codecs), codecs, codecs, reason=f"{why}: {codecs} kept for the codecs")

    def as_dict(self) -> dict[str, int]:
        return {"torch": self.torch, "decode": self.decode, "encode": self.encode}

    def line(self) -> str:
        return f"threads: torch {self.torch}, decode {self.decode}, encode {self.encode} ({self.reason})"


def codec_ms(source_wh: tuple[int, int], output_wh: tuple[int, int] | None = None) -> float:
    """Estimated CPU ms to decode a frame at the source size and encode one at the output size."""
    out = output_wh or source_wh
    return (source_wh[0] * source_wh[1] * DECODE_NS_PER_PIXEL + out[0] * out[1] * ENCODE_NS_PER_PIXEL) / 1e6


def forward_ms(forward: Callable[[], object], repeats: int = 2) -> float:
    """The fastest of `repeats` calls (the first also warms lazy initialisation up), in ms."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def timed_budget(
    forward: Callable[[], object], source_wh: tuple[int, int], output_wh: tuple[int, int] | None = None
) -> ThreadBudget:
    """The CPU budget from one warm `forward` (the model loaded with every core) against the codecs'
    estimate; sets torch's pool to it. Call on the model thread. ONNX runtimes keep the pool they
    were loaded with (every core)."""
    with torch.inference_mode():
        model_ms = forward_ms(forward)
    budget = ThreadBudget.plan("cpu", None, model_ms, codec_ms(source_wh, output_wh))
    torch.set_num_threads(budget.torch)
    return budget


def rule() -> str:
    """The rule in one line, for `doctor`."""
    return (
        f"on the CPU the model takes every core when a forward costs >= {MODEL_DOMINATES:g}x the codecs' "
        "work per frame (timed at start-up), else a quarter of the cores stays with the codecs"
    )
