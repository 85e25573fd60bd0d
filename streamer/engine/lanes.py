"""Forward passes side by side for a file on the CPU (engine/threads.py says when and why).

Batches go to the lane threads (engine/worker.py) in order and come back oldest first, so each
frame still leaves once and in order whichever pass ends first. The process's first pass in lanes
runs alone: a runtime initialises on its first call, and OpenVINO's Python binding once deadlocked
when two lanes made theirs at once (later runs do not wait: a pass alone leaves a core idle, a
frame's time in a short file). After a stop nothing waits for a pass: the lanes end theirs on their
own.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, wait

from streamer.engine import worker

POLL_S = 0.1
_first_pass_done = threading.Event()  # a pass in lanes completed in this process


class Lanes:
    def __init__(self, count: int, stop: threading.Event) -> None:
        self.count = count
        self._stop = stop
        self._computing: deque[tuple[object, float, Future]] = deque()  # (batch, started, pass), oldest first

    def __len__(self) -> int:
        return len(self._computing)

    def full(self) -> bool:
        return len(self._computing) >= self.count

    def submit(self, batch, started: float, fn: Callable, *args) -> None:
        """Start `fn(*args)`, `batch`'s pass, on a lane; the process's first returns once it is done."""
        future = worker.in_lane(self.count, fn, *args)
        self._computing.append((batch, started, future))
        if not _first_pass_done.is_set() and self._done(future) and future.exception() is None:
            _first_pass_done.set()

    def oldest(self) -> tuple[object, float, object] | None:
        """The oldest batch, when it started, and what its pass returned (raised here); None when
        the run stopped first."""
        batch, started, future = self._computing.popleft()
        return (batch, started, future.result()) if self._done(future) else None

    def _done(self, future: Future) -> bool:
        while not future.done():
            if self._stop.is_set():
                return False
            wait([future], timeout=POLL_S)
        return True
