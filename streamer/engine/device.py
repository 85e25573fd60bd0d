"""Host <-> device transfers that overlap with compute on CUDA and degrade to plain copies on CPU.

Upload: frames are copied into a small ring of reusable pinned uint8 buffers and sent with
`non_blocking=True` on a side stream; the compute stream waits on an event, so the copy of
batch k+1 runs while batch k computes. Download: results are copied into pinned buffers on the
compute stream with an event recorded; the host waits on that event only when it needs the
arrays, never with a device-wide synchronize.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

RING_SIZE = 3


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from streamer.errors import ConfigError

        raise ConfigError("device cuda was requested but CUDA is not available", hint="use --device cpu")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """auto: fp16 on CUDA (what the model is fast in), fp32 on CPU."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]


@dataclass
class _Slot:
    host: torch.Tensor | dict[str, torch.Tensor] | None = None
    event: torch.cuda.Event | None = None


class DeviceTransfer:
    def __init__(self, device: torch.device, pinned: bool = True, side_stream: bool = True) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.pinned = pinned and self.cuda
        self.copy_stream = torch.cuda.Stream(device) if self.cuda and side_stream else None
        self._up = [_Slot() for _ in range(RING_SIZE)]
        self._down = [_Slot() for _ in range(RING_SIZE)]
        self._up_next = 0
        self._down_next = 0

    def _take(self, ring: list[_Slot], index: int) -> _Slot:
        slot = ring[index % RING_SIZE]
        if slot.event is not None:
            slot.event.synchronize()  # only waits for this slot's previous copy, long finished
        return slot

    def upload(self, images: list[np.ndarray]) -> torch.Tensor:
        """list of (H, W, 3) uint8 -> (N, H, W, 3) uint8 on the device, usable on the current stream."""
        if not self.cuda:
            return torch.from_numpy(np.stack(images)).to(self.device)
        shape = (len(images), *images[0].shape)
        slot = self._take(self._up, self._up_next)
        self._up_next += 1
        if slot.host is None or tuple(slot.host.shape) != shape:
            slot.host = torch.empty(shape, dtype=torch.uint8, pin_memory=self.pinned)
        host = slot.host.numpy()
        for i, image in enumerate(images):
            host[i] = image
        compute = torch.cuda.current_stream(self.device)
        stream = self.copy_stream or compute
        with torch.cuda.stream(stream):
            on_device = slot.host.to(self.device, non_blocking=self.pinned)
            slot.event = torch.cuda.Event()
            slot.event.record(stream)
        if stream is not compute:
            compute.wait_event(slot.event)
            on_device.record_stream(compute)
        return on_device

    def download(self, maps: dict[str, torch.Tensor]) -> PendingDownload:
        """Start copying results to the host; `PendingDownload.wait()` returns numpy arrays."""
        if not self.cuda:
            return PendingDownload({k: v.cpu() for k, v in maps.items()}, None)
        slot = self._take(self._down, self._down_next)
        self._down_next += 1
        host = slot.host if isinstance(slot.host, dict) else {}
        for key, value in maps.items():
            if key not in host or host[key].shape != value.shape or host[key].dtype != value.dtype:
                host[key] = torch.empty(value.shape, dtype=value.dtype, pin_memory=self.pinned)
            host[key].copy_(value, non_blocking=self.pinned)
        slot.host = host
        slot.event = torch.cuda.Event()
        slot.event.record(torch.cuda.current_stream(self.device))
        return PendingDownload({k: host[k] for k in maps}, slot.event)


class PendingDownload:
    def __init__(self, host: dict[str, torch.Tensor], event: torch.cuda.Event | None) -> None:
        self._host = host
        self._event = event

    def wait(self) -> dict[str, np.ndarray]:
        if self._event is not None:
            self._event.synchronize()
            return {k: v.numpy().copy() for k, v in self._host.items()}  # the pinned slot is reused
        return {k: v.numpy() for k, v in self._host.items()}
