"""Feeding one sink from its queue: on the sink's own thread, or on the main thread for GUI sinks.

The runner writes, releases each result's buffers back to the engine, times the sink, and always
closes it: complete when the run ended normally (or a person stopped a live source), partial
after an error or a file's interruption.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Protocol

from streamer.engine.queues import END, StageQueue
from streamer.engine.stats import Stats
from streamer.errors import StopRequested


class RunControl(Protocol):
    """What a runner needs of the run that owns it (the Pipeline), without importing it."""

    stats: Stats

    def fail(self, stage: str, exc: BaseException) -> None: ...

    def person_stop(self) -> None: ...

    def outputs_complete(self) -> bool: ...


class SinkRunner:
    """Feeds one sink from its queue, on whichever thread calls `step`, and always closes it.

    `counts_frames`: this runner's writes are the run's output count (the first sink's)."""

    def __init__(self, pipeline: RunControl, sink, queue: StageQueue, counts_frames: bool = False) -> None:
        self.pipeline, self.sink, self.queue = pipeline, sink, queue
        self.counts_frames = counts_frames
        self.idle = getattr(sink, "idle_interval", None)
        self.finished = False

    def step(self, timeout: float) -> bool:
        """Write what arrived within `timeout`; False once the sink is finished."""
        try:
            item = self.queue.get(timeout=self.idle or timeout)
        except Empty:
            if self.idle:
                self.sink.idle()
            return True
        if item is END:
            self.finish()
            return False
        started = time.perf_counter()
        try:
            self.sink.write(item)
        finally:
            item.done()
        self.pipeline.stats.stage(f"sink:{self.sink.name}", time.perf_counter() - started)
        if self.counts_frames:
            self.pipeline.stats.frame_out(item.frame.capture_time)
        return True

    def finish(self, failed: bool = False) -> None:
        if not self.finished:
            self.finished = True
            self.sink.close(complete=not failed and self.pipeline.outputs_complete())

    def run(self, timeout: float) -> None:
        """The loop of a sink on a thread of its own."""
        while self.guarded_step(timeout):
            pass

    def guarded_step(self, timeout: float) -> bool:
        try:
            return self.step(timeout)
        except StopRequested:
            self.pipeline.person_stop()
            return True
        except KeyboardInterrupt:  # Ctrl-C while the main thread wrote: a person's stop, not a failure
            raise
        except BaseException as exc:  # recorded with its stage, re-raised by run()
            self.pipeline.fail(f"sink:{self.sink.name}", exc)
            self.finish(failed=True)
            return False


def open_sinks(sinks: list, source, stats: Stats) -> None:
    """Open every sink for the source's stream; if one fails, close those opened and the source."""
    opened = []
    try:
        for sink in sinks:
            sink.open(source.info, stats)
            opened.append(sink)
    except BaseException:
        for sink in opened:
            sink.close(complete=False)
        source.close()
        raise
