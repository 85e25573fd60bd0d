"""The thread that finishes batches one behind the model on the CPU.

After a forward pass come the stabiliser and the pictures: per-pixel work at the output size. On
a GPU it is a few kernels queued on the model's stream and costs the host nothing. On the CPU it
is real work (a 1080p colour picture costs more than a 56x112 forward, measured in `bench`) and,
done on the model thread, it adds to every frame's time. Here it runs on a thread of its own, in
order, while the model computes the next batch: the model thread only waits when more than
`depth` batches are still unfinished (files keep every frame; memory stays bounded).

Errors go to `on_error` (the pipeline records the first with its stage and stops); after a stop,
batches not yet started are dropped, since their results would be refused anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

POLL_S = 0.1
DEPTH = 2  # batches submitted and not yet finished (files): one finishing, one waiting


def finishes_apart(device: torch.device) -> bool:
    """Whether a run finishes batches here: on the CPU, with torch's pool at one thread (a runtime
    with its own pool, or a budget that keeps cores for the codecs), so the finisher's torch work
    starts no second pool. Beside a torch model on every core a second pool competes with it
    (bench, vit-small 224x392 on 2 cores: the forward 326-350 ms alone, 393-401 ms beside the
    finisher); there batches finish on the model thread. Call on the model thread."""
    return device.type == "cpu" and torch.get_num_threads() == 1


class Finisher:
    def __init__(self, stop: threading.Event, on_error: Callable[[BaseException], None], depth: int = DEPTH) -> None:
        self._stop = stop
        self._on_error = on_error
        self._slots = threading.BoundedSemaphore(depth)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamer-finish")

    def submit(self, fn: Callable[..., None], *args) -> bool:
        """Queue `fn(*args)` behind the batches before it; waits while `depth` are unfinished.
        False when the run stopped meanwhile (nothing was queued)."""
        while not self._slots.acquire(timeout=POLL_S):
            if self._stop.is_set():
                return False
        self._executor.submit(self._run, fn, *args)
        return True

    def _run(self, fn: Callable[..., None], *args) -> None:
        try:
            if not self._stop.is_set():
                fn(*args)
        except BaseException as exc:  # recorded by the owner, which stops the run
            self._on_error(exc)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Wait for every queued batch (after a stop they return at once), then end the thread."""
        self._executor.shutdown(wait=True)
