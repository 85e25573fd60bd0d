"""The one thread that runs the model: loading, warm-up and inference happen on it (a file's
forward passes may also run in lanes, below).

On the CPU, PyTorch's OpenMP pool belongs to the thread that first runs parallel work; a model
loaded on one thread and run on another gets a second pool that competes with the first
(measured on 2 cores: 9.5 -> 5.1 fps). Keeping every torch call of the model on this thread
keeps one pool, and leaves the main thread free for what must run there: GUI windows (macOS
allows them only on the main thread) and signal handling.

A batch run with several GPUs in one process holds one model per GPU: each gets a model thread
of its own, named by a key (the default key "" is the process-wide one every command uses).

A file on the CPU may also run forward passes in lanes (`lanes`): threads that each run one
batch's forward at a time on a share of the cores (engine/threads.py says when and why). They
count as the model thread's work for `busy`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_executors: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()
_running = 0  # tasks under way on any model thread


def device_executor(key: str = "") -> ThreadPoolExecutor:
    """The model thread for `key` (created on first use, kept for the next run)."""
    with _lock:
        if key not in _executors:
            suffix = f"-{key.replace(':', '')}" if key else ""
            _executors[key] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"device-worker{suffix}")
        return _executors[key]


def lanes(count: int) -> ThreadPoolExecutor:
    """`count` lane threads for forward passes side by side (created on first use, kept)."""
    key = f"lanes-{count}"
    with _lock:
        if key not in _executors:
            _executors[key] = ThreadPoolExecutor(max_workers=count, thread_name_prefix="device-lane")
        return _executors[key]


def in_lane(count: int, fn: Callable[..., T], *args) -> Future[T]:
    """Start `fn(*args)` on one of `count` lanes; its future."""
    return lanes(count).submit(_counted(fn), *args)


def busy() -> bool:
    """Whether a model thread is loading or computing now (a stopped run does not wait for it)."""
    return _running > 0


def _counted(fn: Callable[..., T]) -> Callable[..., T]:
    def run(*args, **kwargs) -> T:
        global _running
        with _lock:
            _running += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with _lock:
                _running -= 1

    return run


def submit(fn: Callable[..., T], *args, **kwargs) -> Future[T]:
    return device_executor().submit(_counted(fn), *args, **kwargs)


def on_model_thread(key: str, fn: Callable[..., T], *args) -> T:
    """Run `fn` on the model thread named `key` and wait for it (exceptions re-raised here)."""
    return device_executor(key).submit(_counted(fn), *args).result()


def on_device_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run `fn` on the model thread and wait for it (exceptions re-raised here)."""
    return submit(fn, *args, **kwargs).result()
