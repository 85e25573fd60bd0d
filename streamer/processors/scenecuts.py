"""Scene cuts for the depth stabiliser: decided on the device, read back without waiting.

A cut resets the stabiliser's state (its reference and running means), so depth never blends
two scenes; the cuts found are also reported with their frames and times (stats, sidecars).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from streamer.processors.stabilize_params import StabilizeParams


@dataclass(frozen=True)
class Cut:
    """A detected scene cut: the first frame of the new scene (`index` counts pushes from 0)."""

    index: int
    key: Any
    time: float | None
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"frame": self.index, "time": self.time, "score": round(self.score, 4)}


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(3, h, w) RGB in 0..1 -> (3, h, w) hue, saturation, value in 0..1."""
    r, g, b = rgb
    value, low = rgb.amax(0), rgb.amin(0)
    delta = value - low
    saturation = delta / value.clamp_min(1e-6)
    d = delta.clamp_min(1e-6)
    hue = torch.where(value == r, (g - b) / d, torch.where(value == g, 2 + (b - r) / d, 4 + (r - g) / d))
    return torch.stack((torch.remainder(hue / 6, 1.0), saturation, value))


def content_change(hsv: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Mean abs difference of hue (circular, weighted by saturation: grey hue is noise), S and V."""
    dh = (hsv[0] - prev[0]).abs()
    dh = torch.minimum(dh, 1 - dh) * 2 * torch.minimum(hsv[1], prev[1])
    return (dh.mean() + (hsv[1] - prev[1]).abs().mean() + (hsv[2] - prev[2]).abs().mean()) / 3


class CutDetector:
    """Hard cuts from downscaled RGB frames, as PySceneDetect's AdaptiveDetector decides them.

    A frame starts a new scene when its HSV change from the previous frame is at least
    `cut_ratio` times the average change of the last `cut_window` frames (so camera motion and
    fades, which change every frame a little, do not count), at least `cut_min_score` in absolute
    terms (so noise on a still picture does not count), and the current scene is at least
    `min_scene_len` frames long. Only past frames are used, and the decision stays on the device.
    """

    def __init__(self, params: StabilizeParams) -> None:
        self.params = params
        self.reset()

    def reset(self) -> None:
        self._prev: torch.Tensor | None = None
        self._scores = self._counted = self._length = torch.zeros(())
        self._slot = 0

    def __call__(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, h, w) RGB in 0..1 -> (1.0 if this frame starts a new scene else 0.0, the change score)."""
        p = self.params
        hsv = rgb_to_hsv(rgb)
        prev, self._prev = self._prev, hsv
        if prev is None:
            self._scores, self._counted = hsv.new_zeros(p.cut_window), hsv.new_zeros(p.cut_window)
            self._length = hsv.new_ones(())  # frames in the current scene before the next one
            return hsv.new_zeros(()), hsv.new_zeros(())
        score = content_change(hsv, prev)
        recent = (self._scores * self._counted).sum() / self._counted.sum().clamp_min(1)
        cut = (score >= p.cut_min_score) & (score >= p.cut_ratio * recent) & (self._length >= p.min_scene_len)
        cut = cut.float()
        slot, self._slot = self._slot % p.cut_window, self._slot + 1
        self._scores[slot] = score
        self._counted[slot] = 1 - cut  # a cut's score stays out of the average, or it would hide the next cut
        self._length = self._length * (1 - cut) + 1
        return cut, score


class CutLog:
    """Cut flags decided on the device, read back without making the stream wait.

    Each flag starts a non-blocking copy to (pinned) host memory, read by a later push once it has
    landed; `resolve` waits for the rest.
    """

    def __init__(self) -> None:
        self.cuts: list[Cut] = []
        self._pending: deque[tuple[int, Any, float | None, torch.Tensor, torch.cuda.Event | None]] = deque()

    def add(self, index: int, key: Any, time: float | None, cut: torch.Tensor, score: torch.Tensor) -> None:
        flags, event = torch.stack((cut, score)), None
        if flags.is_cuda:  # a non-blocking copy to the CPU lands in pinned memory
            # the copy runs on the current stream of the flags' own GPU, which need not be the
            # current GPU of this thread: the event marks that stream, or it could fire too early
            stream = torch.cuda.current_stream(flags.device)
            flags, event = flags.to("cpu", non_blocking=True), torch.cuda.Event()
            event.record(stream)
        self._pending.append((index, key, time, flags, event))
        self._collect(wait=False)

    def _collect(self, wait: bool) -> None:
        while self._pending:
            index, key, time, flags, event = self._pending[0]
            if event is not None and not event.query():
                if not wait:
                    return
                event.synchronize()
            self._pending.popleft()
            cut, score = flags.tolist()
            if cut:
                self.cuts.append(Cut(index, key, time, score))

    def resolve(self) -> list[Cut]:
        self._collect(wait=True)
        return self.cuts
