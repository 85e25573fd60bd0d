"""Flicker of the real network's depth on a still scene with sensor noise, with and without the stabiliser.

    python benchmarks/flicker.py                          # rule weights, input 112x196, 30 frames of 320x180
    python benchmarks/flicker.py --checkpoint metric_depth_vit_small_800k.pth --input-size 616x1064

The scene does not move, so every change of depth between frames is flicker: the network reacting
to per-frame Gaussian sensor noise. Each mode runs through the engine (file policy, batch 1) as
`streamer transcode` would. Flicker is mean |d_t - d_(t-1)| / d_t over pixels and frame pairs;
bias is the mean log ratio of the stabilised depth to the raw one (0 = as metric as the model).
Without --checkpoint the network has deterministic rule weights, not the trained ones (no model
hub is reachable where this was written): its depth is not a scene's depth, but it is the real
network, input path and engine reacting to real pixel noise.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import torch

from streamer.bench import build_stage
from streamer.config import load_config
from streamer.engine import worker
from streamer.engine.pipeline import Pipeline
from streamer.processors.stabilize_stage import StabilizeStage
from streamer.sinks import Sink
from streamer.sources.base import Source
from streamer.sources.testsrc import pattern_image
from streamer.types import Frame, StreamInfo


class NoisyStill(Source):
    """One still picture (the test pattern at t=0) plus fresh Gaussian noise in every frame, as a file."""

    def __init__(self, size: tuple[int, int], frames: int, sigma: float, seed: int = 0, rate: int = 30) -> None:
        w, h = size
        still = pattern_image(w, h, 0.0).astype(np.float32)
        rng = np.random.default_rng(seed)
        self.images = [
            np.clip(still + rng.normal(0, sigma, still.shape), 0, 255).round().astype(np.uint8) for _ in range(frames)
        ]
        self.info = StreamInfo(w, h, Fraction(1, rate), Fraction(rate), False, frames, "noisy-still")

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        for i, image in enumerate(self.images):
            yield Frame(image, i, i, self.info.time_base, time.monotonic())


class Depths(Sink):
    needs = frozenset({"depth"})

    def __init__(self) -> None:
        self.depths: list[np.ndarray] = []

    def write(self, result) -> None:
        self.depths.append(result.depth.astype(np.float64))


def flicker(depths: list[np.ndarray]) -> float:
    pairs = [np.abs(b - a)[b > 0] / b[b > 0] for a, b in zip(depths, depths[1:], strict=False)]
    return float(np.mean([p.mean() for p in pairs]))


def bias(depths: list[np.ndarray], raw: list[np.ndarray]) -> float:
    return float(np.mean([np.log(d[r > 0] / r[r > 0]).mean() for d, r in zip(depths, raw, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--input-size", default="112x196")
    parser.add_argument("--size", default="320x180", help="source WxH")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--sigma", type=float, nargs="+", default=[2.0, 4.0, 8.0], help="noise std in 8-bit levels")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    size = tuple(int(p) for p in args.size.split("x"))
    model = {"input_size": args.input_size, "device": "cpu", "checkpoint": args.checkpoint}
    cfg = load_config(None, {"model": {k: v for k, v in model.items() if v is not None}})
    worker.on_device_thread(torch.set_num_threads, args.threads)
    stage = worker.on_device_thread(build_stage, cfg, False)
    weights = "rule weights (NOT the trained ones)" if args.checkpoint is None else args.checkpoint
    print(f"vit-small, {weights}, input {args.input_size}, {args.frames} frames of {args.size}, CPU")
    print("| noise sigma | mode | flicker | vs raw | bias vs raw |")
    print("| --- | --- | --- | --- | --- |")
    for sigma in args.sigma:
        source = NoisyStill(size, args.frames, sigma)
        runs = {}
        for mode in ("off", "causal", "lookahead"):
            sink = Depths()
            Pipeline(source, stage, [sink], stabilizer=StabilizeStage(mode)).run()
            runs[mode] = sink.depths
        raw = flicker(runs["off"])
        for mode, depths in runs.items():
            figures = f"{flicker(depths):.5f} | {flicker(depths) / raw:.3f} | {bias(depths, runs['off']):+.5f}"
            print(f"| {sigma:g} | {'raw (off)' if mode == 'off' else mode} | {figures} |")


if __name__ == "__main__":
    main()
