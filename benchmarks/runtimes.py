"""The runtime comparison table: the same weights and input through every runtime, in one run.

Each runtime runs the whole stage (letterbox, network, metric maps) on one 640x360 frame. Rounds
go round-robin over the runtimes, so a busy machine slows them alike; the table gives the median
and the fastest of the rounds, and each runtime's depth p99.9 relative difference from torch fp32.

usage (repository root):
  python benchmarks/runtimes.py --input-size 224x392 --rounds 7 --threads 2
  python benchmarks/runtimes.py --input-size 616x1064 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from streamer.models.metric3d import build_metric3d
from streamer.models.metric3d.weights import load_weights, rule_weights, to_model_keys
from streamer.processors.metric3d import Metric3DProcessor
from streamer.runtimes import Request, installed, open_runtime
from streamer.sources.testsrc import pattern_image

ROWS = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", default="224x392")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbone", default="vit-small")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.input_size.split("x"))
    torch.set_num_threads(args.threads)
    state = to_model_keys(rule_weights(build_metric3d(args.backbone, device="meta")))
    frame = torch.from_numpy(pattern_image(640, 360, 0.2))[None]
    processors, depth = {}, {}
    for name, precision in ROWS:
        if not installed(name):
            continue
        model = build_metric3d(args.backbone, device="meta")
        load_weights(model, state)
        request = Request(name, torch.device("cpu"), precision, size, args.backbone, threads=args.threads)
        runtime, _ = open_runtime(request, model)
        processors[(name, precision)] = Metric3DProcessor(runtime, size)
        depth[(name, precision)] = processors[(name, precision)](frame, 500.0, 500.0, wants={"depth"})["depth"]
    times: dict = {key: [] for key in processors}
    for _ in range(args.rounds):
        for key, processor in processors.items():
            started = time.perf_counter()
            processor(frame, 500.0, 500.0, wants={"depth"})
            times[key].append(1000 * (time.perf_counter() - started))
    ref = depth[("torch", "fp32")]
    print(f"{args.backbone}, input {size[0]}x{size[1]}, {args.threads} threads, {args.rounds} rounds")
    print("| runtime | precision | ms per frame (median) | fastest | depth p99.9 rel. vs torch fp32 |")
    print("|---|---|---|---|---|")
    for (name, precision), ms in times.items():
        rel = ((depth[(name, precision)] - ref).abs() / ref.clamp_min(1e-6)).flatten().numpy()
        print(f"| {name} | {precision} | {statistics.median(ms):.0f} | {min(ms):.0f} | {np.quantile(rel, 0.999):.1e} |")


if __name__ == "__main__":
    main()
