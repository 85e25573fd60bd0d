"""The depth stabiliser as the engine runs it: batches of frames in, frames with stabilised depth out.

The engine calls this between the model stage and the outputs (pictures, millimetres), on the
model's device, with each batch's maps and uploaded frames. In `causal` mode every frame comes
straight back. In `lookahead` mode a frame comes back `lookahead` frames later, so the frames,
their other maps, uploaded images and metadata wait here beside the depth, and `flush` returns
the rest at the end of a file. Either way every frame comes back exactly once, in order, as
`Ready` groups of one size and one metadata that the engine treats like batches; the engine never
needs to know which frames are held.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from streamer.processors.render import resize_u8
from streamer.processors.stabilize import StabilizeParams, Stabilizer
from streamer.types import Frame


@dataclass
class Ready:
    """Frames whose maps are final: the engine makes the outputs of these next."""

    frames: list[Frame]
    maps: dict[str, torch.Tensor]  # (N, ...) at the output size
    images: torch.Tensor  # (N, H, W, 3) uint8 as uploaded
    meta: dict


class StabilizeStage:
    """Runs a `Stabilizer` over the engine's batches and keeps each frame with its own maps."""

    def __init__(self, mode: str = "causal", params: StabilizeParams | None = None) -> None:
        self.stabilizer = Stabilizer(mode, params)
        self._description = (
            {"mode": mode} if mode == "off" else {"mode": mode, "params": self.stabilizer.params.as_dict()}
        )
        self._held: deque[Ready] = deque()  # pushed frames not yet returned, one per entry
        self._reported = 0  # cuts handed out by `new_cuts`

    @property
    def mode(self) -> str:
        return self.stabilizer.mode

    @property
    def latency(self) -> int:
        """Frames a pushed frame waits for (lookahead); live sources need 0."""
        return self.stabilizer.latency

    @property
    def needs(self) -> frozenset[str]:
        """Maps the model stage must make for the stabiliser, whatever the sinks need."""
        return frozenset() if self.mode == "off" else frozenset({"depth", "confidence"})

    def describe(self) -> dict[str, Any]:
        """The mode and every parameter, for sidecars: the output can be reproduced from them."""
        return self._description

    def start(self) -> None:
        """A new stream: forget the last one's scene, held frames and cuts."""
        self.stabilizer.reset()
        self._held.clear()
        self._reported = 0

    @torch.inference_mode()
    def __call__(
        self, frames: list[Frame], maps: dict[str, torch.Tensor], images: torch.Tensor, meta: dict
    ) -> list[Ready]:
        """A batch from the model stage -> the groups of frames that are ready now (maybe none)."""
        if self.mode == "off":
            return [Ready(frames, maps, images, meta)]
        depth, confidence = maps["depth"], maps["confidence"]
        seen = resize_u8(images, tuple(depth.shape[1:3]))  # what the stabiliser compares between frames
        out = []
        for i, frame in enumerate(frames):
            own = {name: value[i : i + 1] for name, value in maps.items()}  # views: nothing is copied
            self._held.append(Ready([frame], own, images[i : i + 1], meta))
            ready = self.stabilizer.push(depth[i], confidence[i], seen[i], key=frame.index, time=frame.seconds)
            out += [self._release(result) for _, result in ready]
        return group(out)

    @torch.inference_mode()
    def flush(self) -> list[Ready]:
        """The held frames, at the end of a file (the stream may go on afterwards)."""
        return group([self._release(result) for _, result in self.stabilizer.flush()])

    def new_cuts(self, wait: bool = False) -> list[dict[str, Any]]:
        """Scene cuts found since the last call, as {frame, time, score}. Without `wait` only those
        whose decision has reached the host (never stalls the stream); with it, all (at the end)."""
        cuts = self.stabilizer.cuts if wait else self.stabilizer.cuts_known
        new, self._reported = cuts[self._reported :], len(cuts)
        return [{"frame": cut.key, "time": cut.time, "score": round(cut.score, 4)} for cut in new]

    def _release(self, depth: torch.Tensor) -> Ready:
        """The oldest held frame with its stabilised depth (the stabiliser returns frames in push order)."""
        item = self._held.popleft()
        item.maps = {**item.maps, "depth": depth[None]}
        return item


def group(items: list[Ready]) -> list[Ready]:
    """Single frames -> runs of frames with one size and one metadata, each stacked like a batch."""
    groups: list[list[Ready]] = []
    for item in items:
        last = groups[-1][-1] if groups else None
        if last is not None and last.images.shape == item.images.shape and last.meta == item.meta:
            groups[-1].append(item)
        else:
            groups.append([item])
    return [stack(run) for run in groups]


def stack(run: list[Ready]) -> Ready:
    if len(run) == 1:
        return run[0]
    maps = {name: torch.cat([item.maps[name] for item in run]) for name in run[0].maps}
    images = torch.cat([item.images for item in run])
    return Ready([f for item in run for f in item.frames], maps, images, run[0].meta)
