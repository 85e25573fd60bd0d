"""Temporal stabiliser for per-frame metric depth, with scene-cut detection (issue 13).

A monocular model predicts every frame on its own, so its global scale jumps by a few per cent
from frame to frame and textured regions shimmer. This stage runs between the model and the
sinks, on the model's device, and removes both while keeping the output metric:

- Global: each frame's log-depth offset against a running low-resolution reference of the scene
  is a confidence-weighted median of log ratios over static pixels. The output's scale is a
  moving average of the model's own scales, so the correction averages to ~0 and cannot drift.
- Local: every pixel keeps a confidence-weighted running mean, in the reference's scale, that is
  cleared where the input image or the depth changed: moving things follow at once, static ones
  settle. The smoothed global scale is applied on the way out.
- Scene cuts (colour change of downscaled frames against the recent average, as PySceneDetect's
  AdaptiveDetector does; scenecuts.py) reset both, and are reported in `Stabilizer.cuts`.

Modes: `off`, `causal` (no latency) and `lookahead` (for files: K future frames refine the scale;
outputs come K frames later and `flush` returns the rest). Per frame the cost is a few dozen
elementwise ops at full size, the rest at 1/8 size. Nothing waits for the device: even the cut
decision stays there (resets are arithmetic), and cuts are read back when their copy has landed.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from streamer.errors import ConfigError
from streamer.processors.metric3d import MAX_METRIC_DEPTH
from streamer.processors.scenecuts import Cut, CutDetector, CutLog
from streamer.processors.stabilize_params import MODES, StabilizeParams, param_names

__all__ = ["MODES", "Cut", "CutDetector", "StabilizeParams", "Stabilizer", "pool", "weighted_median"]

MIN_DEPTH = 1e-3  # metres; the model clamps at 0, logs need a floor


def ramp(x: torch.Tensor, start: float, full: float) -> torch.Tensor:
    """0 below `start`, 1 above `full`, linear between: a soft threshold without flicker at the edge."""
    return ((x - start) / (full - start)).clamp_(0, 1)


def pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Area-average (H, W) or (C, H, W) by an integer factor (a remainder at the border is dropped)."""
    return x if factor == 1 else F.avg_pool2d(x[None], factor)[0]


def weighted_median(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted median as a 0-d tensor, computed without a host sync.

    A tiny weight on every value makes an all-zero weight map fall back to the plain median.
    """
    v, order = values.reshape(-1).sort()
    cumulative = (weights.reshape(-1)[order] + 1e-6).cumsum(0)
    index = torch.searchsorted(cumulative, cumulative[-1:] * 0.5).clamp_(max=v.numel() - 1)
    return v[index][0]


class RunningMean:
    """Per-pixel confidence-weighted mean over the frames since the pixel last changed.

    Static pixels should average the model's noise away, but a pixel whose content changed must
    take the new value at once (no ghost trails): `motion` in 0..1 clears its past, softly. The
    total weight is capped at `memory`, so old frames fade (an EMA of rate 1/memory at steady
    state); an unsure frame adds less weight, so it moves the mean less and unsure pixels average
    over more frames. Updates are out of place: a returned mean is never changed afterwards.
    """

    def __init__(self, memory: float) -> None:
        self.memory = memory
        self.reset()

    def reset(self) -> None:
        self.mean: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None

    def update(self, x: torch.Tensor, weight: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.weight is None:
            self.mean, self.weight = x, weight
            return x
        self.weight = torch.addcmul(weight, 1 - motion, self.weight).clamp_(max=self.memory)
        self.mean = torch.lerp(self.mean, x, weight / self.weight)
        return self.mean


@dataclass
class _Pending:
    """A measured frame waiting for its output (lookahead holds a few)."""

    key: Any
    depth: torch.Tensor  # (H, W) metres, as pushed
    weight: torch.Tensor  # (H, W) confidence weight in [floor, 1]
    motion: torch.Tensor  # (h, w) 0..1 in blocks: the input image changed here
    scale: torch.Tensor  # 0-d: log-scale of the frame against the scene's reference
    cut: torch.Tensor  # 0-d: 1.0 where the cut detector started a new scene here
    restart: bool  # the host knows a new stream starts here: first frame, or a new size


class Stabilizer:
    """Per-stream temporal stabiliser: push metric depth frames in, get stabilised ones out.

    `push` returns the frames that became ready as (key, depth) pairs: in `causal` mode the pushed
    frame itself, in `lookahead` mode the frame pushed `lookahead` pushes earlier; `flush`
    returns the rest at the end of the stream. `off` returns its input unchanged. `key` is opaque;
    `time` (seconds) is recorded with cuts. Pushed tensors must stay unchanged until their frame
    is returned. State lives on the device of the pushed tensors.
    """

    def __init__(self, mode: str = "causal", params: StabilizeParams | None = None, **overrides: Any) -> None:
        if mode not in MODES:
            raise ConfigError(f"stabilize mode {mode!r} is unknown", hint=f"use one of {', '.join(MODES)}")
        names = param_names()
        if set(overrides) - set(names):
            unknown = ", ".join(sorted(set(overrides) - set(names)))
            raise ConfigError(f"stabilizer parameter {unknown} unknown", hint=f"use {', '.join(names)}")
        self.mode = mode
        self.params = replace(params or StabilizeParams(), **overrides)
        self.reset()

    @property
    def latency(self) -> int:
        """Frames between a push and the return of its output."""
        return self.params.lookahead if self.mode == "lookahead" else 0

    @property
    def cuts(self) -> list[Cut]:
        """The cuts so far, in order; reading it waits for the device to decide the last frames."""
        return self._log.resolve()

    @property
    def cuts_known(self) -> list[Cut]:
        """The cuts whose decision has reached the host already: reading it never waits (live stats)."""
        return self._log.cuts

    def reset(self) -> None:
        """Forget the stream: a new one starts with the next push."""
        self._log = CutLog()
        self._detector = CutDetector(self.params)
        self._reference = RunningMean(self.params.pixel_memory)  # low-res log depth, scene reference scale
        self._pixels = RunningMean(self.params.pixel_memory)  # full-size output depth
        self._queue: deque[_Pending] = deque()
        self._prev_luma: torch.Tensor | None = None
        self._luma = torch.tensor((0.299, 0.587, 0.114))  # BT.601 luma weights
        self._index = 0
        self._scale = self._count = torch.zeros(())  # smoothed log-scale, and frames in it, of the scene

    def push(
        self,
        depth: torch.Tensor,
        confidence: torch.Tensor | None,
        image: torch.Tensor,
        key: Any = None,
        time: float | None = None,
    ) -> list[tuple[Any, torch.Tensor]]:
        """depth (H, W) float32 m, confidence (H, W) or None, image (H, W, 3) uint8 -> ready frames."""
        if self.mode == "off":
            return [(key, depth)]
        if depth.dim() != 2 or image.shape != (*depth.shape, 3):
            raise ValueError(f"stabilizer needs depth (H, W) and image (H, W, 3), got {depth.shape}, {image.shape}")
        if confidence is None:
            confidence = torch.ones_like(depth)
        with torch.inference_mode():
            self._queue.append(self._measure(depth, confidence, image, key, time))
            return self._drain(self.latency)

    def flush(self) -> list[tuple[Any, torch.Tensor]]:
        """The frames still held (lookahead), in order; the stream may go on afterwards."""
        with torch.inference_mode():
            return self._drain(0)

    def _measure(self, depth, confidence, image, key, time) -> _Pending:
        """Push side: cut detection, image motion, confidence weights, scale against the reference."""
        p = self.params
        factor = max(1, min(p.work_scale, min(depth.shape) // p.min_work_side))
        block = min(factor, p.motion_scale)
        step = max(1, block // 2)  # only block means of the image change are used: a sample will do
        rgb = image[::step, ::step].float()  # channels last: luma is one matmul
        small = pool(rgb.permute(2, 0, 1), max(1, factor // step)) / 255
        restart = self._prev_luma is None or self._prev_luma.shape != rgb.shape[:2]
        if restart:
            self._detector.reset()
        cut, score = self._detector(small)
        self._log.add(self._index, key, time, cut, score)
        self._index += 1
        # brightness relative to the frame's mean, so a global exposure change is not motion
        weights = self._luma = self._luma.to(rgb.device)  # moved once per stream, not per frame
        luma = rgb @ (weights / (255 * (weights @ small.mean((1, 2))).clamp_min(0.02)))
        motion = image_motion(luma, luma if restart else self._prev_luma, p.image_change, max(1, block // step))
        self._prev_luma = luma
        small_confidence = pool(confidence, factor)
        ranked = small_confidence.reshape(-1).sort().values  # (torch.quantile may check on the host)
        top = ranked[int(0.9 * (ranked.numel() - 1))].clamp_min(1e-6)
        weight = (confidence / top).clamp_(p.confidence_floor, 1.0)
        small_weight = (small_confidence / top).clamp_(p.confidence_floor, 1.0)
        scale = self._align(pool(depth, factor), small_weight, torch.maximum(motion, cut), cut, restart)
        return _Pending(key, depth, weight, motion, scale, cut, restart)

    def _align(self, small, weight, motion, cut, restart: bool) -> torch.Tensor:
        """Log-scale of the frame against the scene's reference (0-d tensor); updates the reference.

        The reference is the scene's low-resolution log depth brought to a common scale and
        averaged per pixel over static frames; the median over confident, static pixels ignores
        moving objects and outliers. After a cut the frame becomes the reference, at scale 0.
        """
        log_depth = small.clamp_min(MIN_DEPTH).log()
        changed = F.adaptive_avg_pool2d(motion[None, None], small.shape)[0, 0]
        ref = self._reference
        if restart or ref.mean is None:
            ref.reset()
            scale = log_depth.new_zeros(())
        else:
            valid = (small > MIN_DEPTH) & (small < 0.99 * MAX_METRIC_DEPTH)
            scale = weighted_median(log_depth - ref.mean, weight * (1 - changed) * valid) * (1 - cut)
            step = self.params.depth_change
            changed = torch.maximum(changed, ramp((log_depth - scale - ref.mean).abs(), step, 2 * step))
        ref.update(log_depth - scale, weight, changed)
        return scale

    def _drain(self, keep: int) -> list[tuple[Any, torch.Tensor]]:
        """Emit held frames down to `keep` (and all of a stream that a new size closed)."""
        out = []
        while self._queue and (len(self._queue) > keep or any(i.restart for i in list(self._queue)[1:])):
            head = self._queue.popleft()
            future = list(itertools.takewhile(lambda item: not item.restart, self._queue))
            out.append(self._emit(head, future[: self.params.lookahead]))
        return out

    def _emit(self, item: _Pending, future: list[_Pending]) -> tuple[Any, torch.Tensor]:
        """Output side: the per-pixel running mean in the reference's scale, times the smoothed scale.

        The smoothed scale averages the model's scales: past ones through an EMA, plus the
        lookahead frames up to the next cut. A scene's first frame keeps the model's scale, so a
        cut shows at once. Cuts act through arithmetic (weights of 0), never through a branch.
        """
        p = self.params
        if item.restart:
            self._pixels.reset()
            self._scale = self._count = item.scale.new_zeros(())
        same = torch.zeros_like(item.cut) if item.restart else 1 - item.cut  # 0 on a scene's first frame
        past = self._count.clamp(max=p.scale_memory - 1) * same  # weight of the smoothed past
        total = past * self._scale + item.scale
        acc, weight, keep = total, past + 1, same
        for later in future:
            keep = keep * (1 - later.cut)
            acc, weight = acc + keep * later.scale, weight + keep
        self._scale, self._count = total / (past + 1), past + 1
        x = item.depth * (-item.scale).exp()  # in the scene's reference scale, where static pixels stay put
        changed = F.interpolate(torch.maximum(item.motion, item.cut)[None, None], size=x.shape, mode="nearest")[0, 0]
        mean = self._pixels.mean
        if mean is not None:
            jump = (x - mean).abs_().div_(mean.clamp_min(MIN_DEPTH))
            changed = torch.maximum(changed, ramp(jump, p.depth_change, 2 * p.depth_change))
        out = self._pixels.update(x, item.weight, changed) * (acc / weight).exp()
        return item.key, out.clamp_(max=MAX_METRIC_DEPTH)


def image_motion(luma: torch.Tensor, prev: torch.Tensor, threshold: float, block: int) -> torch.Tensor:
    """(h, w) 0..1 per block: where the image changed since the previous frame, grown by a block.

    Block means of the absolute difference keep sensor noise below the threshold (a shifted texture
    is not); growing by a block covers the edges of moving objects. Pooling windows at full size
    would cost more than the whole stage.
    """
    diff = (luma - prev).abs_()[None, None]
    coarse = F.avg_pool2d(diff, block, ceil_mode=True) if block > 1 else diff
    return F.max_pool2d(ramp(coarse, threshold, 3 * threshold), 3, 1, 1)[0, 0]
