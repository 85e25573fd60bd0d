"""One model, several files at once: a stage shared by pipelines, and jobs run side by side.

A batch of videos keeps one model per GPU (or one on the CPU) busy by feeding it from several file
pipelines: while one file's frames are on the model, the others decode and encode. Each pipeline
of a `SharedStage` runs its inference loop on a thread of its own and hands every batch's device
work to the stage's model thread: the upload and forward pass as one call, then (on a GPU) the
pictures and download start as another; the model thread's queue serialises the calls, first come
first served, so the files take turns batch by batch and the model runs only on the thread that
loaded it (engine/worker.py). On the CPU each pipeline's own finisher thread makes its maps,
stabiliser and pictures (engine/finish.py), as in a run of its own.

`run_concurrently` runs the file jobs themselves, a few at a time, on named engine threads,
while the caller's thread waits for outcomes, ticks progress, and turns Ctrl-C into a stop.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

from streamer.engine import worker

log = logging.getLogger(__name__)
K = TypeVar("K")
T = TypeVar("T")
TICK_S = 0.25


class SharedStage:
    """A loaded stage that several pipelines feed at once, through its model thread `key`."""

    def __init__(self, stage: Any, key: str = "") -> None:
        self.stage = stage
        self.key = key
        self.device: torch.device = stage.device
        self.meta: dict = getattr(stage, "meta", {})
        if hasattr(stage, "infer"):  # a stage whose per-pixel maps can be made off the model thread
            self.infer, self.maps = stage.infer, stage.maps

    def __call__(self, images: torch.Tensor, wants: set[str], focal_hint=None) -> tuple[dict[str, torch.Tensor], dict]:
        return self.stage(images, wants, focal_hint)

    def warm_up(self, batch: int) -> None:
        """The shared model's warm-up (`--compile`), if it has one; the engine runs it on the model thread."""
        warm_up = getattr(self.stage, "warm_up", None)
        if warm_up is not None:
            warm_up(batch)

    def call(self, fn: Callable[..., T], *args) -> T:
        """Run one batch's device work on the model thread, after the calls queued before it."""
        return worker.on_model_thread(self.key, fn, *args)


def run_concurrently(
    jobs: Iterable[tuple[K, Callable[[], T]]],
    workers: int,
    on_interrupt: Callable[[], None],
    tick: Callable[[], None] | None = None,
) -> Iterator[tuple[K, T | BaseException]]:
    """Run `jobs` (key, callable) `workers` at a time; yield (key, result or exception) as each ends.

    Outcomes are yielded on the caller's thread, so what consumes them needs no lock. Ctrl-C (or
    SIGTERM turned into KeyboardInterrupt) calls `on_interrupt` once, which must make the running
    jobs end soon; no new job starts, the running ones are waited for and yielded, and then
    KeyboardInterrupt is raised again. Threads are joined before this returns, also on error.
    """
    pending = iter(jobs)
    outcomes: queue.Queue = queue.Queue()
    threads: dict[Any, threading.Thread] = {}
    interrupted = False
    serial = 0
    try:
        while True:
            while not interrupted and len(threads) < workers:
                job = next(pending, None)
                if job is None:
                    break
                serial += 1
                threads[job[0]] = _start(job[0], job[1], outcomes, serial)
            if not threads:
                break
            try:
                item = _next_outcome(outcomes, tick)
            except KeyboardInterrupt:
                if not interrupted:
                    interrupted = True
                    on_interrupt()
                continue
            if item is None:
                continue
            key, outcome = item
            threads.pop(key).join()
            yield key, outcome
    finally:
        if threads:  # the consumer stopped early or failed: stop and wait for what still runs
            on_interrupt()
        for thread in threads.values():
            thread.join()
    if interrupted:
        raise KeyboardInterrupt


def _next_outcome(outcomes: queue.Queue, tick: Callable[[], None] | None) -> tuple | None:
    """Tick (after each outcome the caller took, and every TICK_S), then wait for the next outcome."""
    if tick is not None:
        tick()
    try:
        return outcomes.get(timeout=TICK_S)
    except queue.Empty:
        return None


def _start(key: Any, job: Callable[[], Any], outcomes: queue.Queue, serial: int) -> threading.Thread:
    def guarded() -> None:
        try:
            outcome: Any = job()
        except BaseException as exc:  # handed to the caller's thread with its key
            log.debug("job %s failed", key, exc_info=exc)
            outcome = exc
        outcomes.put((key, outcome))

    thread = threading.Thread(target=guarded, name=f"streamer-job-{serial}")
    thread.start()
    return thread
