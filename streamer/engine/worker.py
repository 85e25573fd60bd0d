"""The one thread that runs the model: loading, warm-up and inference all happen on it.

On the CPU, PyTorch's OpenMP pool belongs to the thread that first runs parallel work; a model
loaded on one thread and run on another gets a second pool that competes with the first
(measured on 2 cores: 9.5 -> 5.1 fps). Keeping every torch call of the model on this thread
keeps one pool, and leaves the main thread free for what must run there: GUI windows (macOS
allows them only on the main thread) and signal handling.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_executor: ThreadPoolExecutor | None = None


def device_executor() -> ThreadPoolExecutor:
    """The process-wide model thread (created on first use, kept for the next run)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device-worker")
    return _executor


def submit(fn: Callable[..., T], *args, **kwargs) -> Future[T]:
    return device_executor().submit(fn, *args, **kwargs)


def on_device_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run `fn` on the model thread and wait for it (exceptions re-raised here)."""
    return submit(fn, *args, **kwargs).result()
