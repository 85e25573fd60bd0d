"""CPU threads for decoding, the model and encoding, sized together for the machine.

Left alone, the decoder, the encoder and torch each start a thread per core and oversubscribe
a small machine (measured: a 1080p pipeline on 2 cores lost to the serial loop). On the CPU the
model gets most cores and the codecs share the rest; on a GPU the model needs one host thread
and the codecs get the cores.
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
            return cls(torch=max(1, cores - cores // 4), decode=codecs, encode=codecs)
        decode = max(1, cores // 3)
        return cls(torch=min(2, cores), decode=decode, encode=max(1, cores - decode - 1))

    def as_dict(self) -> dict[str, int]:
        return {"torch": self.torch, "decode": self.decode, "encode": self.encode}
