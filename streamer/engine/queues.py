"""Bounded queues with the two flow policies.

`block`: a full queue blocks the producer (files: every frame is kept, the reader waits).
`latest`: a full queue drops its oldest item (live: latency stays bounded, drops are counted).
The end-of-stream sentinel is always accepted, even when the queue is full.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from queue import Empty
from typing import Any

POLICIES = ("block", "latest")


class EndOfStream:
    """Sentinel put on a queue after the last item."""


END = EndOfStream()


class StageQueue:
    def __init__(
        self, maxsize: int, policy: str = "block", name: str = "", on_drop: Callable[[Any], None] | None = None
    ) -> None:
        """`on_drop(item)` is called for each item a `latest` queue drops (to release what it holds)."""
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}")
        self.on_drop = on_drop
        self.maxsize = maxsize
        self.policy = policy
        self.name = name
        self.dropped = 0
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any, stop: threading.Event | None = None) -> bool:
        """False if the queue was closed (or `stop` set) before the item could be queued."""
        with self._cond:
            if self.policy == "latest":
                while len(self._items) >= self.maxsize:
                    dropped = self._items.popleft()
                    self.dropped += 1
                    if self.on_drop is not None:
                        self.on_drop(dropped)
            else:
                while len(self._items) >= self.maxsize and not self._closed:
                    if stop is not None and stop.is_set():
                        return False
                    self._cond.wait(0.05)
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def put_end(self, sentinel: Any) -> None:
        with self._cond:
            self._items.append(sentinel)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: self._items, timeout):
                raise Empty
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """Wake every waiter; later puts are refused."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
