"""Live statistics: per-stage time, fps in/out, capture-to-sink latency percentiles, drops, scene cuts.

Sinks get the run's Stats when they open; file sinks read the scene cuts from it when they write
their sidecar at close, after the engine has recorded the last one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

WINDOW = 512  # latencies and stage times kept for percentiles / means


@dataclass
class StageTimer:
    total: float = 0.0
    count: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=WINDOW))

    def add(self, seconds: float, items: int = 1) -> None:
        self.total += seconds
        self.count += items
        self.recent.append(seconds / max(items, 1))


class Stats:
    """Updated by the pipeline's threads; `snapshot()` is safe to call from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.stages: dict[str, StageTimer] = {}
        self.frames_in = 0
        self.frames_out = 0
        self.latencies: deque[float] = deque(maxlen=WINDOW * 8)
        self._out_times: deque[float] = deque(maxlen=64)
        self._in_times: deque[float] = deque(maxlen=64)
        self.queue_depths: dict[str, Callable[[], int]] = {}
        self.drop_counters: dict[str, Callable[[], int]] = {}
        self.detects_cuts = False  # the stabiliser runs, so scene cuts are looked for
        self.cuts: list[dict] = []  # {frame, time (s), score} of each scene cut, in order

    def stage(self, name: str, seconds: float, items: int = 1) -> None:
        with self._lock:
            self.stages.setdefault(name, StageTimer()).add(seconds, items)

    def frame_in(self) -> None:
        with self._lock:
            self.frames_in += 1
            self._in_times.append(time.monotonic())

    def scene_cut(self, cut: dict) -> None:
        with self._lock:
            self.cuts.append(dict(cut))

    def cut_list(self) -> list[dict]:
        """A copy of the cuts so far (the engine may still be adding to them)."""
        with self._lock:
            return [dict(cut) for cut in self.cuts]

    def frame_out(self, capture_time: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.frames_out += 1
            self.latencies.append(now - capture_time)
            self._out_times.append(now)

    @staticmethod
    def _rate(times: deque) -> float:
        if len(times) < 2 or times[-1] == times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def snapshot(self) -> dict:
        with self._lock:
            lat = np.array(self.latencies) * 1000 if self.latencies else np.zeros(1)
            elapsed = time.monotonic() - self.started
            return {
                "elapsed_s": elapsed,
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "fps_in": self._rate(self._in_times),
                "fps_out": self._rate(self._out_times),
                "fps_out_mean": self.frames_out / elapsed if elapsed > 0 else 0.0,
                "latency_ms": {
                    "p50": float(np.percentile(lat, 50)),
                    "p95": float(np.percentile(lat, 95)),
                    "max": float(lat.max()),
                },
                "stage_ms": {name: 1000 * t.total / max(t.count, 1) for name, t in self.stages.items()},
                "queue_depth": {name: fn() for name, fn in self.queue_depths.items()},
                "dropped": {name: fn() for name, fn in self.drop_counters.items()},
                "frames_dropped": sum(fn() for fn in self.drop_counters.values()),
                "scene_cuts": len(self.cuts),
            }

    def run_summary(self, count: int, unit: str) -> str:
        """The end of a run: `count` results (what the outputs hold) over the run's wall time.

        Not the live rate of `summary_line`: over the last frames' spacing one still gives 0 fps and
        two from one batch a thousand; the run's time from this Stats' creation to now does not."""
        s = self.snapshot()
        seconds = s["elapsed_s"]
        rate = f" ({count / seconds:.3g} {unit}s/s)" if count and seconds > 0 else ""
        cuts = f", scene cuts {s['scene_cuts']}" if self.detects_cuts else ""
        return (
            f"{count} {unit}{'s' if count != 1 else ''} in {seconds:.2f} s{rate}, latency p50 "
            f"{s['latency_ms']['p50']:.0f} ms p95 {s['latency_ms']['p95']:.0f} ms, dropped {s['frames_dropped']}{cuts}"
        )

    def summary_line(self) -> str:
        """The live rate (over the last frames), latency and drops: the preview window's status line."""
        s = self.snapshot()
        cuts = f"  scene cuts {s['scene_cuts']}" if self.detects_cuts else ""
        return (
            f"{s['fps_out']:.1f} fps  latency p50 {s['latency_ms']['p50']:.0f} ms "
            f"p95 {s['latency_ms']['p95']:.0f} ms  dropped {s['frames_dropped']}{cuts}"
        )
