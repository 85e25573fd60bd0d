"""Figures for the depth stabiliser: quality on the synthetic ground-truth sequences, cost per frame.

    python benchmarks/stabilize.py                 # quality + CPU timing at 1920x1080 (2 threads)
    python benchmarks/stabilize.py --device cuda   # timing on the GPU as well

Quality uses the sequences of tests/test_stabilize.py (a known depth sequence with scale jitter,
pixel noise and a cut); the cost is the median wall time of `push` over a loop of frames, with the
device synchronised after each (streamer.bench_costs.stabilizer_cost, which `streamer bench` reports too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from streamer.bench_costs import stabilizer_cost  # noqa: E402

import test_stabilize as gt  # noqa: E402  (the ground-truth generator lives with the tests)


def quality() -> None:
    for name, spec in (("main", gt.MAIN), ("held-out", gt.HELD_OUT), ("large", gt.LARGE)):
        seq = gt.make_sequence(spec)
        for mode in ("causal", "lookahead"):
            out, stab = gt.stabilise(seq, mode)
            figures = gt.figures(seq, out)
            cuts = [c.index for c in stab.cuts]
            print(f"{name:9s} {mode:9s} cuts {cuts} " + " ".join(f"{k} {v:.3f}" for k, v in figures.items()))


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
            median, best = stabilizer_cost(
                device, mode, (1080, 1920), args.frames if device == "cpu" else 10 * args.frames
            )
            print(f"{device:5s} {mode:9s} 1920x1080: {median * 1000:.2f} ms per frame (median; best {best * 1000:.2f})")


if __name__ == "__main__":
    main()
