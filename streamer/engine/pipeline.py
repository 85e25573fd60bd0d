"""source -> [capture thread] -> queue -> [inference thread] -> queues -> [one thread per sink].

The inference thread is the thread that calls `run()`, the one that loaded the model: on the CPU,
PyTorch's OpenMP pool belongs to a thread, and a second thread running the model gets a second
pool that competes with the first (measured: 2x slower on 2 cores). Ownership otherwise follows
concurrent.futures: the Pipeline starts named, non-daemon threads for capture and sinks, records
the first exception with its stage, stops the others through an Event plus end-of-stream
sentinels, joins them all, and re-raises in the caller's thread. `stop()` is idempotent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from queue import Empty
from typing import Protocol

import torch

from streamer.engine.device import DeviceTransfer
from streamer.engine.queues import StageQueue
from streamer.engine.stats import Stats
from streamer.errors import Interrupted, PipelineError, StopRequested
from streamer.types import EndOfStream, Frame, Result

log = logging.getLogger(__name__)
END = EndOfStream()
JOIN_POLL_S = 0.1
TICK_S = 0.25


class FrameProcessor(Protocol):
    """What the inference thread runs: uint8 frames on the device -> named maps (N, ...) + metadata."""

    device: torch.device

    def __call__(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict]: ...


class Pipeline:
    def __init__(
        self,
        source,
        processor: FrameProcessor,
        sinks: list,
        batch_size: int = 1,
        queue_size: int = 4,
        pinned_memory: bool = True,
        cuda_stream: bool = True,
        stats: Stats | None = None,
    ) -> None:
        self.source = source
        self.processor = processor
        self.sinks = sinks
        self.live = bool(source.info.live)
        self.batch_size = 1 if self.live else batch_size
        self.stats = stats or Stats()
        self.transfer = DeviceTransfer(processor.device, pinned_memory, cuda_stream)
        # live: a one-slot queue that always holds the newest frame; files: back-pressure
        self.frames = StageQueue(1, "latest", "frames") if self.live else StageQueue(queue_size, "block", "frames")
        self.outputs = [
            StageQueue(queue_size, "latest" if getattr(s, "live", False) else "block", s.name) for s in sinks
        ]
        for q in (self.frames, *self.outputs):
            self.stats.queue_depths[q.name] = q.__len__
            self.stats.drop_counters[q.name] = lambda q=q: q.dropped
        self._stop = threading.Event()
        self._interrupted = False
        self._error: PipelineError | None = None
        self._error_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._tick: Callable[[Stats], None] | None = None
        self._last_tick = 0.0

    # -- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self.frames.close()

    def _fail(self, stage: str, exc: BaseException) -> None:
        with self._error_lock:
            if self._error is None:
                self._error = PipelineError(stage, exc)
                log.debug("%s failed", stage, exc_info=exc)
        self.stop()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                target()
            except StopRequested:
                self.stop()
            except BaseException as exc:  # recorded with its stage, re-raised by run()
                self._fail(name, exc)

        thread = threading.Thread(target=guarded, name=f"streamer-{name}")
        self._threads.append(thread)
        thread.start()

    def run(self, tick: Callable[[Stats], None] | None = None) -> dict:
        """Run to the end of the input (or a stop) and return the statistics snapshot.

        `tick(stats)` is called about every TICK_S seconds (progress displays). Ctrl-C stops the
        run cleanly: sinks are finalised and Interrupted is raised.
        """
        self._tick = tick
        self._open_sinks()
        for sink, queue in zip(self.sinks, self.outputs, strict=True):
            self._spawn(f"sink:{sink.name}", lambda s=sink, q=queue: self._sink_loop(s, q))
        self._spawn("capture", self._capture_loop)
        try:
            self._inference_loop()
        except StopRequested:
            self.stop()
        except KeyboardInterrupt:
            self._interrupted = True
            self.stop()
        except BaseException as exc:  # recorded with its stage like the other threads' errors
            self._fail("inference", exc)
        finally:
            for queue in self.outputs:
                queue.put_end(END)
        self._join()
        if self._error is not None:
            raise self._error
        if self._interrupted:
            raise Interrupted(f"interrupted after {self.stats.frames_out} frames; outputs were finalised")
        return self.stats.snapshot()

    def _open_sinks(self) -> None:
        opened = []
        try:
            for sink in self.sinks:
                sink.open(self.source.info, self.stats)
                opened.append(sink)
        except BaseException:
            for sink in opened:
                sink.close(complete=False)
            self.source.close()
            raise

    def _join(self) -> None:
        try:
            while any(t.is_alive() for t in self._threads):
                for t in self._threads:
                    t.join(JOIN_POLL_S / len(self._threads))
                self._maybe_tick()
        except KeyboardInterrupt:
            self._interrupted = True
            self.stop()
            for t in self._threads:
                t.join()
        finally:
            self.source.close()
            self._maybe_tick(force=True)

    def _maybe_tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._tick is not None and (force or now - self._last_tick >= TICK_S):
            self._last_tick = now
            self._tick(self.stats)

    # -- stages ----------------------------------------------------------------------------

    def _capture_loop(self) -> None:
        try:
            for frame in self.source.frames(self._stop):
                self.stats.frame_in()
                if not self.frames.put(frame, self._stop):
                    break
        finally:
            self.frames.put_end(END)

    def _next_batch(self, carry: list[Frame]) -> list[Frame] | None:
        batch = carry[:1] if carry else []
        carry.clear()
        while len(batch) < self.batch_size:
            try:
                item = self.frames.get(timeout=JOIN_POLL_S)
            except Empty:
                if self._stop.is_set():
                    return None
                continue
            if item is END:
                self.frames.put_end(END)  # leave it for the next call
                break
            if batch and item.image.shape != batch[0].image.shape:
                carry.append(item)  # a batch holds one frame size
                break
            batch.append(item)
        return batch or None

    def _inference_loop(self) -> None:
        pending: deque = deque()
        carry: list[Frame] = []
        while not self._stop.is_set():
            self._maybe_tick()
            batch = self._next_batch(carry)
            if batch is None:
                break
            started = time.perf_counter()
            images = self.transfer.upload([f.image for f in batch])
            maps, meta = self.processor(images)
            pending.append((batch, self.transfer.download(maps), meta, started))
            if len(pending) > 1:  # keep one batch in flight while the next is queued
                self._emit(*pending.popleft())
        while pending and not self._stop.is_set():
            self._emit(*pending.popleft())

    def _emit(self, batch: list[Frame], download, meta: dict, started: float) -> None:
        arrays = download.wait()
        self.stats.stage("inference", time.perf_counter() - started, len(batch))
        for i, frame in enumerate(batch):
            result = Result(frame, {k: v[i] for k, v in arrays.items()}, meta)
            if not self.outputs:
                self.stats.frame_out(frame.capture_time)
            for queue in self.outputs:
                queue.put(result, self._stop)

    def _sink_loop(self, sink, queue: StageQueue) -> None:
        complete = False
        try:
            idle = getattr(sink, "idle_interval", None)
            while True:
                try:
                    item = queue.get(timeout=idle or JOIN_POLL_S)
                except Empty:
                    if idle:
                        sink.idle()
                    continue
                if item is END:
                    complete = not self._stop.is_set()
                    break
                started = time.perf_counter()
                sink.write(item)
                self.stats.stage(f"sink:{sink.name}", time.perf_counter() - started)
                if queue is self.outputs[0]:
                    self.stats.frame_out(item.frame.capture_time)
        finally:
            sink.close(complete=complete and self._error is None)
