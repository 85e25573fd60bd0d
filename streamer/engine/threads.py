"""CPU threads for decoding, the model and encoding, sized together for the machine.

Left alone, the decoder, the encoder and torch each start a thread per core and oversubscribe
the machine. An OpenMP team is as slow as its slowest thread: when an encoder thread takes a
core from one of torch's threads, every parallel op waits for it. Measured on 2 cores (vit-small
at 56x112, 1080p source, `streamer bench`): with torch on both cores the model took 171 ms a
frame inside the pipeline against 114 ms alone, and the pipeline lost to the serial loop (0.92x);
with one core kept for the codecs the pipeline ran 1.2x the serial loop. So on the CPU the
codecs get a quarter of the cores (at least one) and torch the rest; on a GPU the model needs
one or two host threads and the codecs get the cores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadBudget:
    torch: int
    decode: int
    encode: int

    @classmethod
    def plan(cls, device_type: str, total: int | None = None) -> ThreadBudget:
        cores = max(1, total or os.cpu_count() or 1)
        if device_type == "cpu":
            codecs = max(1, cores // 4)
            return cls(torch=max(1, cores - codecs), decode=codecs, encode=codecs)
        decode = max(1, cores // 3)
        return cls(torch=min(2, cores), decode=decode, encode=max(1, cores - decode - 1))

    def as_dict(self) -> dict[str, int]:
        return {"torch": self.torch, "decode": self.decode, "encode": self.encode}
