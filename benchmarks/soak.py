"""Soak: a live source for thousands of frames at a tiny model input; memory must stay flat and
latency bounded. Prints RSS every N frames and the final statistics.

    python benchmarks/soak.py --frames 5000
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import streamer  # noqa: F401  (loads OpenCV before PyAV)
from streamer.engine.pipeline import Pipeline
from streamer.models.metric3d import build_metric3d
from streamer.models.metric3d.weights import load_weights, rule_weights, to_model_keys
from streamer.processors.metric3d import Metric3DProcessor, Metric3DStage
from streamer.sinks import Sink
from streamer.sources import PatternSource


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssProbe(Sink):
    name = "rss"

    def __init__(self, every: int) -> None:
        self.every, self.count, self.samples = every, 0, []

    def write(self, result) -> None:
        self.count += 1
        if self.count % self.every == 0:
            self.samples.append((self.count, rss_mb()))
            print(f"{self.count:6d} frames out  RSS {self.samples[-1][1]:7.1f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--fps", type=float, default=120.0)
    parser.add_argument("--input-size", default="56x84")
    parser.add_argument("--every", type=int, default=100, help="print RSS every N frames out")
    args = parser.parse_args()
    h, w = (int(v) for v in args.input_size.split("x"))
    model = build_metric3d("vit-small", device="meta")
    load_weights(model, to_model_keys(rule_weights(model)))
    stage = Metric3DStage(Metric3DProcessor(model.eval(), (h, w)), lambda width: (1000.0, 1000.0))
    probe = RssProbe(every=args.every)
    started = time.monotonic()
    stats = Pipeline(PatternSource(f"testsrc:160x120@{args.fps}", frames=args.frames), stage, [probe]).run()
    first, last = probe.samples[1][1], probe.samples[-1][1]
    print(
        f"{stats['frames_in']} in, {stats['frames_out']} out, {stats['frames_dropped']} dropped "
        f"in {time.monotonic() - started:.0f} s; latency p50 {stats['latency_ms']['p50']:.0f} ms "
        f"p95 {stats['latency_ms']['p95']:.0f} ms max {stats['latency_ms']['max']:.0f} ms; "
        f"RSS {first:.0f} -> {last:.0f} MB ({100 * (last / first - 1):+.1f}%); threads left: "
        f"{[t.name for t in threading.enumerate() if t.name.startswith('streamer-')]}"
    )


if __name__ == "__main__":
    main()
