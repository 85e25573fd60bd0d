"""Figures for the depth stabiliser: quality on the synthetic ground-truth sequences, cost per frame.

    python benchmarks/stabilize.py                 # quality + CPU timing at 1920x1080 (2 threads)
    python benchmarks/stabilize.py --device cuda   # timing on the GPU as well

Quality uses the sequences of tests/test_stabilize.py (a known depth sequence with scale jitter,
pixel noise and a cut); the cost is the mean wall time of `push` over a loop of frames, with the
device synchronised, so it includes the one host sync per frame.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import test_stabilize as gt  # noqa: E402  (the ground-truth generator lives with the tests)

from streamer.processors.stabilize import Stabilizer  # noqa: E402


def quality() -> None:
    for name, spec in (("main", gt.MAIN), ("held-out", gt.HELD_OUT), ("large", gt.LARGE)):
        seq = gt.make_sequence(spec)
        for mode in ("causal", "lookahead"):
            out, stab = gt.stabilise(seq, mode)
            figures = gt.figures(seq, out)
            cuts = [c.index for c in stab.cuts]
            print(f"{name:9s} {mode:9s} cuts {cuts} " + " ".join(f"{k} {v:.3f}" for k, v in figures.items()))


def cost(device: str, mode: str, size: tuple[int, int], frames: int) -> tuple[float, float]:
    """Median and best seconds per push at `size`, after two warm-up frames (medians shrug off a busy
    machine; on CUDA each push is timed to the end of its device work)."""
    gen = torch.Generator().manual_seed(0)
    h, w = size
    base = 2 + 4 * torch.rand(h, w, generator=gen)
    depths = [(base * (1 + 0.02 * i)).to(device) for i in range(3)]  # a jittering scale
    confidence = torch.rand(h, w, generator=gen).to(device)
    images = [torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).to(device) for _ in range(2)]
    stab = Stabilizer(mode)
    for i in range(2):
        stab.push(depths[i], confidence, images[i])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for i in range(frames):
        sync()
        start = time.perf_counter()
        stab.push(depths[i % 3], confidence, images[i % 2])
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-quality", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.no_quality:
        quality()
    devices = ["cpu", args.device] if args.device != "cpu" else ["cpu"]
    for device in devices:
        for mode in ("causal", "lookahead"):
            median, best = cost(device, mode, (1080, 1920), args.frames if device == "cpu" else 10 * args.frames)
            print(f"{device:5s} {mode:9s} 1920x1080: {median * 1000:.2f} ms per frame (median; best {best * 1000:.2f})")


if __name__ == "__main__":
    main()
