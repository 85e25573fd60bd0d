"""Devices, and host <-> device transfers that overlap with compute on CUDA and are plain on CPU.

Upload: frames are copied into a small ring of reusable pinned uint8 buffers and sent with
`non_blocking=True` on a side stream; the compute stream waits on an event, so the copy of
batch k+1 runs while batch k computes. Download: the side stream waits for the results, copies
them into a pinned slot and records an event; the host waits on that event only when it needs
the arrays, never with a device-wide synchronize. The slot's arrays go to the sinks as they
are (no second host copy) and the slot is reused once every sink has released it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

RING_SIZE = 3


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA, then Apple's MPS, then the CPU."""
    from streamer.errors import ConfigError

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but CUDA is not available", hint="use --device cpu")
    if device.type == "mps" and not mps_available():
        raise ConfigError("device mps was requested but Apple's MPS is not available", hint="use --device cpu")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """auto: fp16 on CUDA and MPS (what the model is fast in), fp32 on CPU."""
    if precision == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]


@dataclass
class _Slot:
    host: torch.Tensor | dict[str, torch.Tensor] | None = None
    event: torch.cuda.Event | None = None
    holders: int = 0  # sinks still reading this download slot


@dataclass
class Lease:
    """Shared by the results of one download: the slot returns to the pool when all are done."""

    slot: _Slot | None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self, count: int) -> None:
        if self.slot is not None:
            with self.lock:
                self.slot.holders += count

    def release(self) -> None:
        if self.slot is not None:
            with self.lock:
                self.slot.holders -= 1


class DeviceTransfer:
    def __init__(self, device: torch.device, pinned: bool = True, side_stream: bool = True) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.pinned = pinned and self.cuda
        self.copy_stream = torch.cuda.Stream(device) if self.cuda and side_stream else None
        self._up = [_Slot() for _ in range(RING_SIZE)]
        self._up_next = 0
        self._down: list[_Slot] = []  # grows to what the sinks hold at once, then is reused

    def upload(self, images: list[np.ndarray]) -> torch.Tensor:
        """list of (H, W, 3) uint8 -> (N, H, W, 3) uint8 on the device, usable on the current stream."""
        if not self.cuda:
            return torch.from_numpy(np.stack(images)).to(self.device)
        shape = (len(images), *images[0].shape)
        slot = self._up[self._up_next % RING_SIZE]
        self._up_next += 1
        if slot.event is not None:
            slot.event.synchronize()  # only waits for this slot's previous copy, long finished
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

    def _free_slot(self) -> _Slot:
        for slot in self._down:
            if slot.holders == 0:
                return slot
        self._down.append(_Slot())
        return self._down[-1]

    def download(self, maps: dict[str, torch.Tensor]) -> PendingDownload:
        """Start copying results to the host; `PendingDownload.wait()` returns numpy arrays."""
        if not self.cuda:
            return PendingDownload({k: v.cpu() for k, v in maps.items()}, None, Lease(None))
        slot = self._free_slot()
        slot.holders = 1  # the pipeline's own hold until it hands the arrays out
        host = slot.host if isinstance(slot.host, dict) else {}
        compute = torch.cuda.current_stream(self.device)
        stream = self.copy_stream or compute
        if stream is not compute:
            stream.wait_stream(compute)  # the results exist before they are copied
        with torch.cuda.stream(stream):
            for key, value in maps.items():
                if key not in host or host[key].shape != value.shape or host[key].dtype != value.dtype:
                    host[key] = torch.empty(value.shape, dtype=value.dtype, pin_memory=self.pinned)
                host[key].copy_(value, non_blocking=self.pinned)
                if stream is not compute:
                    value.record_stream(stream)  # the allocator keeps it until the copy is done
            slot.event = torch.cuda.Event()
            slot.event.record(stream)
        slot.host = host
        return PendingDownload({k: host[k] for k in maps}, slot.event, Lease(slot))


class PendingDownload:
    def __init__(self, host: dict[str, torch.Tensor], event: torch.cuda.Event | None, lease: Lease) -> None:
        self._host = host
        self._event = event
        self.lease = lease

    def wait(self) -> dict[str, np.ndarray]:
        """The arrays, as views of the slot: valid until every holder of `lease` has released it."""
        if self._event is not None:
            self._event.synchronize()
        return {k: v.numpy() for k, v in self._host.items()}
