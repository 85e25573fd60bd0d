"""`--compile`: the model compiled for its fixed input size, with eager as the fallback.

The canonical input never changes size, so compilation pays off: on CUDA `reduce-overhead`
also captures CUDA graphs (one launch per forward instead of hundreds). Compilation needs a
working compiler toolchain and can fail on the first call; the run then goes on in eager mode
with a warning rather than stopping.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class CompiledOrEager(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.eager = model
        mode = "reduce-overhead" if device.type == "cuda" else None
        self.compiled = torch.compile(model, mode=mode)
        self.failed = False

    def forward(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # a missing compiler, an unsupported op: eager still works
                self.failed = True
                log.warning("torch.compile failed (%s); running the model eagerly", str(exc).splitlines()[0][:200])
        return self.eager(*args, **kwargs)
