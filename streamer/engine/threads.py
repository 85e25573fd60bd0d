"""CPU threads for decoding, the model and encoding, sized together for the run.

Left alone, the decoder, the encoder and torch each start a thread per core and oversubscribe
the machine. An OpenMP team is as slow as its slowest thread: when an encoder thread takes a
core from one of torch's threads, every parallel op waits for it. Which way to share the cores
depends on what a frame costs and on the machine, so on the CPU the budget is timed at start-up
(on the model thread, after loading, before the first frame):

    the model takes every core (the codecs share them; the OS schedules) when one forward at the
    run's input size with every core, plus STALL (2) times the codecs' estimated work per frame
    (H.264 decode at the source size + encode at the output size), costs no more than one forward
    with a quarter of the cores (at least one) kept for the codecs; otherwise that quarter is kept.

STALL is fitted to the 2-core CPU: with vit-small at 56x112 on a 1080p source (forward 114 ms on
2 threads, 172 on 1, codecs ~55 ms) torch on both cores made the pipeline 0.92x the serial loop and
one core kept 1.2x; at 224x392 on 640x360 (463 ms on 2 threads, 829 on 1, codecs ~6 ms) one torch
thread made it 0.85x of model-only speed. Timing both splits, not a fixed ratio, also sees a
loaded machine, where a team of every core can be slower than one thread. With `--threads N`
nothing is timed: torch gets N less the codecs' quarter. On a GPU the model needs one or two host
threads and the codecs get the cores.

Files on the CPU are also batched where that makes a frame cheaper: small inputs (`file_batch`),
and larger inputs run in lanes: two forward passes side by side, each on half the cores (`file_lanes`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from streamer.runtimes.sizing import tokens

STALL = 2.0  # what a frame of codec work costs an OpenMP team it takes a core from, in its own time
# H.264 per pixel, one thread each, measured at 1080p on the 2-core CPU (benchmarks/README.md):
# decode 8.9 ms and encode 46 ms a frame.
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
        all_ms: float | None = None,
        kept_ms: float | None = None,
        codec_ms: float | None = None,
    ) -> ThreadBudget:
        """The split for `total` cores (default: all). On the CPU, given one forward's ms with every
        core (`all_ms`) and with the codecs' quarter kept (`kept_ms`) and the codecs' ms per frame,
        torch takes every core when all_ms + STALL * codec_ms <= kept_ms; else the fixed split."""
        cores = max(1, total or os.cpu_count() or 1)
        if device_type != "cpu":
            decode = max(1, cores // 3)
            return cls(torch=min(2, cores), decode=decode, encode=max(1, cores - decode - 1), reason="GPU")
        codecs = max(1, cores // 4)
        kept = max(1, cores - codecs)
        if all_ms is None or kept_ms is None or codec_ms is None:
            return cls(torch=kept, decode=codecs, encode=codecs)
        why = f"forward {all_ms:.0f} ms on {cores} threads, {kept_ms:.0f} ms on {kept}, codecs ~{codec_ms:.1f} ms"
        if all_ms + STALL * codec_ms <= kept_ms:
            return cls(torch=cores, decode=codecs, encode=codecs, reason=f"{why}: the model takes every core")
        return cls(torch=kept, decode=codecs, encode=codecs, reason=f"{why}: {cores - kept} kept for the codecs")

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
    """The CPU budget from timing `forward` with every core (twice: the first warms up) and with the
    codecs' quarter kept (once); sets torch's pool to it. Call on the model thread, for the torch
    runtime (the others: `own_pool_budget`)."""
    cores = os.cpu_count() or 1
    kept = ThreadBudget.plan("cpu", cores).torch
    if kept == cores:  # one core: nothing to choose
        return replace(ThreadBudget.plan("cpu", cores), reason="one core: nothing to time")
    with torch.inference_mode():
        torch.set_num_threads(cores)
        all_ms = forward_ms(forward, repeats=2)
        torch.set_num_threads(kept)
        kept_ms = forward_ms(forward, repeats=1)
    budget = ThreadBudget.plan("cpu", cores, all_ms, kept_ms, codec_ms(source_wh, output_wh))
    torch.set_num_threads(budget.torch)
    return budget


BATCH_TOKENS = 128  # files on the CPU batch inputs of at most this many tokens...
CPU_BATCH = 4  # ...this many frames per forward pass


def file_batch(input_size: tuple[int, int]) -> tuple[int, str]:
    """Frames per forward pass for a file on the CPU, by the input's token count: a fixed rule, so
    a file gives the same numbers in every run (a batch sums in another order than single frames).

    A small input's forward is mostly reading weights and starting ops, which a batch shares;
    a larger one is arithmetic, which it does not. Measured on the 2-core CPU, ms a frame at
    batch 1 / 2 / 4: vit-small 56x112 (32 tokens) with torch 73 / - / 48, OpenVINO bf16
    13.2 / 11.2 / 9.3, ONNX Runtime 31 / 22 / 20; 224x392 (448 tokens) with OpenVINO
    104 / 112 / 110 and torch 341 / 312 / -: batching there gains little or loses."""
    h, w = input_size
    count = tokens(input_size)
    if count <= BATCH_TOKENS:
        return CPU_BATCH, f"{h}x{w} is {count} tokens: a forward mostly reads weights, which a batch shares"
    return 1, f"{h}x{w} is {count} tokens: a batch gains little"


LANES = 2  # forward passes side by side for a file on the CPU


def file_lanes(input_size: tuple[int, int], cores: int | None = None) -> tuple[int, str]:
    """Forward passes a file runs side by side on the CPU, and why: LANES for inputs too large to
    batch (`file_batch`) when there are as many cores, each pass on its share of them.

    One pass on every core waits at each op for its slowest thread (and for any core a codec
    thread holds); passes side by side on a core each never wait for each other. Measured on the
    2-core CPU, vit-small, ms a frame one pass on both cores / two passes on one core each: 224x392
    torch fp32 429 / 362, ONNX Runtime 258 / 230, OpenVINO bf16 96-107 / 88; 616x1064 OpenVINO
    1051 / 1019. A small input is batched instead: there the codecs are most of the work (`bench`
    at 1080p / 56x112, OpenVINO batch 4: pipeline 18.5 fps in lanes, 19.8 without). A live source
    runs one pass at a time: a frame would wait for two."""
    cores = max(1, cores or os.cpu_count() or 1)
    if tokens(input_size) <= BATCH_TOKENS:
        return 1, "one forward pass at a time (a small input is batched instead)"
    if cores < LANES:
        return 1, "one core: one forward pass at a time"
    each = cores // LANES
    return LANES, f"{LANES} forward passes side by side, {each} core{'s' * (each > 1)} each"


def lanes_budget(runtime: str, lanes: int, cores: int | None = None) -> ThreadBudget:
    """The split with `lanes` passes side by side: torch's pool is one lane's share of the cores
    (its passes) or one thread (a runtime with its own pool, which splits its cores by lanes itself)."""
    plan = ThreadBudget.plan("cpu", cores)
    total = max(1, cores or os.cpu_count() or 1)
    each = max(1, total // lanes)
    own = runtime != "torch"
    why = f"{lanes} forward passes side by side on {each} thread{'s' * (each > 1)} each" + (
        f" ({runtime}'s own pool); torch 1 for the rest" if own else ""
    )
    return replace(plan, torch=1 if own else each, reason=why)


def own_pool_budget(runtime: str, cores: int | None = None) -> ThreadBudget:
    """A runtime with its own thread pool (OpenVINO, ONNX Runtime) runs the network on every core
    whatever torch's pool is; torch runs only the stage's per-pixel work, on one thread, which lets
    the engine finish each batch on a thread of its own beside the model (engine/finish.py)."""
    plan = ThreadBudget.plan("cpu", cores)
    return replace(plan, torch=1, reason=f"{runtime} runs the network on its own threads; torch 1 for the rest")


def rule() -> str:
    """The rule in one line, for `doctor`."""
    return (
        "on the CPU, timed at start-up: the model takes every core when a forward on all of them plus "
        f"{STALL:g}x the codecs' work per frame beats a forward on the rest, else a quarter stays with the codecs; "
        "OpenVINO and ONNX Runtime run on their own pool of every core, torch on one thread beside them; "
        f"a file at inputs over {BATCH_TOKENS} tokens runs {LANES} forward passes side by side, each on its share of the cores"
    )
