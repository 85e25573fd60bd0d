"""`--compile`: the model compiled for its fixed input size, with eager as the fallback.

The canonical input never changes size, so compilation pays off: on CUDA `reduce-overhead`
also captures CUDA graphs (one launch per forward instead of hundreds). Three rules:
- It compiles before the first frame: the engine calls `warm_up` on the model thread with the
  run's batch size, so a live source's first frame does not wait seconds for the compiler.
- Shapes stay static: a smaller batch (the last one of a file) is padded to the largest batch
  seen and its outputs cut back, so it neither recompiles nor leaves the captured graphs.
- Compilation can fail (no compiler toolchain, an op the compiler does not take): the run then
  goes on eagerly with a warning. Running out of memory is no compiler problem: it is reported
  as a ModelError with what to change, never hidden by a silent switch to eager mode.
"""

from __future__ import annotations

import logging

import torch
from torch.utils._pytree import tree_map

from streamer.errors import ModelError

log = logging.getLogger(__name__)
OOM_HINT = "use a smaller --batch-size or --input-size, --precision fp16, or leave out --compile"


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or an allocator's failure elsewhere (CPU, MPS), also when wrapped
    by the compiler (its errors keep the original as the cause)."""
    while exc is not None:
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
        text = str(exc).lower()
        if isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class CompiledOrEager(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, device: torch.device, backend: str | object = "inductor") -> None:
        super().__init__()
        self.eager = model
        mode = "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None
        self.compiled = torch.compile(model, mode=mode, backend=backend, dynamic=False)
        self.failed = False
        self.batch = 0  # the largest batch seen: smaller ones are padded to it

    def warm_up(self, batch: int, input_hw: tuple[int, int], **kwargs) -> None:
        """Compile now, on the calling (model) thread, for `batch` inputs of `input_hw`."""
        param = next(self.eager.parameters())
        with torch.inference_mode():  # as the processor runs it: the same guards, no second compile
            self(torch.zeros((batch, 3, *input_hw), dtype=param.dtype, device=param.device), **kwargs)

    def forward(self, x: torch.Tensor, **kwargs):
        if self.failed:
            return self.eager(x, **kwargs)
        n = x.shape[0]
        self.batch = max(self.batch, n)
        if n < self.batch:  # the same shape as before: no recompile, the same CUDA graph
            x = torch.cat((x, x[-1:].expand(self.batch - n, *x.shape[1:])))
        try:
            out = self.compiled(x, **kwargs)
        except Exception as exc:  # a missing compiler, an unsupported op: eager still works
            if is_out_of_memory(exc):
                raise ModelError(
                    f"out of memory running the compiled model on {x.shape[0]} frames", hint=OOM_HINT
                ) from exc
            self.failed = True
            log.warning("torch.compile failed (%s); running the model eagerly", str(exc).splitlines()[0][:200])
            return self.eager(x[:n], **kwargs)
        return out if n == self.batch else tree_map(lambda t: cut(t, n), out)


def cut(value, n: int):
    """A padded batch's output back to its `n` frames (outputs are batch-first tensors)."""
    return value[:n] if isinstance(value, torch.Tensor) and value.dim() > 0 else value
