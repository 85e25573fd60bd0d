"""source -> [capture thread] -> queue -> [model thread] -> queues -> [one thread per sink].

The model runs on the process's one model thread (engine/worker.py), where it was loaded, so
the CPU keeps a single OpenMP pool. (A `SharedStage` is fed by several pipelines at once: each
pipeline's loop runs on a thread of its own and sends only each batch's device work to the model
thread.) The main thread, which calls `run()`, handles signals and
runs the sinks that must live on it (GUI windows: macOS allows them only there). Ownership
otherwise follows concurrent.futures: named, non-daemon threads for capture and sinks, the first
exception recorded with its stage, the others stopped through an Event plus end-of-stream
sentinels, all joined, the error re-raised in the caller's thread. `stop()` is idempotent.

Live sources hand each result to the sinks as soon as its download is complete; files keep one
batch in flight so the next batch computes while the last one downloads. A person's stop (a
quit key, Ctrl-C, SIGTERM) ends a live run normally; for a file it is an interruption.

Between the model and the outputs runs the depth stabiliser (processors/stabilize_stage.py). In
lookahead mode it holds a few frames back and returns them, with their own maps, in later groups
and at the end of the file; the engine sends on whatever it returns, so each frame still leaves
once and in order. Live sources refuse lookahead: they cannot wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from queue import Empty
from typing import Protocol, TypeVar

import torch

from streamer.engine import worker
from streamer.engine.device import DeviceTransfer, PendingDownload
from streamer.engine.queues import END, StageQueue
from streamer.engine.shared import SharedStage
from streamer.engine.sink_runner import SinkRunner
from streamer.engine.stats import Stats
from streamer.errors import ConfigError, Interrupted, PipelineError, StopRequested
from streamer.focal import Focal
from streamer.processors.outputs import Outputs
from streamer.processors.stabilize_stage import Ready, StabilizeStage
from streamer.types import Frame, Result

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_S = 0.1
MAIN_POLL_S = 0.01  # how often the main thread looks at its sinks (GUI events stay responsive)
TICK_S = 0.25
SERVICE_START_S = 10.0
# a file's times that leap further than this ahead (a recording paused, clips joined) are not
# waited out when pacing: playback goes on at once and is paced from there (FFmpeg's jump threshold)
PACE_LEAP_S = 10.0


class FrameProcessor(Protocol):
    """What the model thread runs: uint8 frames on the device -> named maps (N, ...) + metadata.

    `focal_hint` is the batch's focal length as its source knows it (Frame.focal; a batch never mixes
    two), for stages whose output depends on it; the others ignore it.
    """

    device: torch.device

    def __call__(
        self, images: torch.Tensor, wants: set[str], focal_hint: Focal | None = None
    ) -> tuple[dict[str, torch.Tensor], dict]: ...


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
        pace: bool = False,
        stabilizer: StabilizeStage | None = None,
    ) -> None:
        self.source = source
        self.processor = processor
        self.sinks = sinks
        self.live = bool(source.info.live)
        self.stabilizer = stabilizer or StabilizeStage("off")
        if self.live and self.stabilizer.latency:
            raise ConfigError(
                "stabilize lookahead holds frames back, which a live source cannot wait for",
                hint="use --stabilize causal (no added latency) for cameras and streams",
            )
        self.pace = pace and not self.live
        self.batch_size = 1 if self.live else batch_size
        self.stats = stats or Stats()
        self.stats.detects_cuts = self.stabilizer.mode != "off"
        self.transfer = DeviceTransfer(processor.device, pinned_memory, cuda_stream)
        self.outputs = Outputs(sinks)
        # live: a one-slot queue that always holds the newest frame; files: back-pressure
        self.frames = (
            StageQueue(1, "latest", "frames", on_drop=self._keep_audio)
            if self.live
            else StageQueue(queue_size, "block", "frames")
        )
        self.queues = [
            StageQueue(queue_size, "latest" if s.live else "block", s.name, on_drop=Result.done) for s in sinks
        ]
        for q in (self.frames, *self.queues):
            self.stats.queue_depths[q.name] = q.__len__
            self.stats.drop_counters[q.name] = lambda q=q: q.dropped
        self._stop = threading.Event()
        self._person_stop = False
        self._error: PipelineError | None = None
        self._lock = threading.Lock()
        self._audio_carry: list = []  # audio of dropped live frames rides on the next frame
        self._threads: list[threading.Thread] = []
        self._tick: Callable[[Stats], None] | None = None
        self._last_tick = 0.0

    # -- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self.frames.close()

    def person_stop(self) -> None:
        """A quit key, Ctrl-C or SIGTERM: a normal end for a live source, an interruption for a file."""
        self._person_stop = True
        self.stop()

    def fail(self, stage: str, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = PipelineError(stage, exc)
                log.debug("%s failed", stage, exc_info=exc)
        self.stop()

    def outputs_complete(self) -> bool:
        """Whether sinks finish their outputs as complete (else they stay partial)."""
        if self._error is not None:
            return False
        return not self._stop.is_set() or (self.live and self._person_stop)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                target()
            except StopRequested:
                self.person_stop()
            except BaseException as exc:  # recorded with its stage, re-raised by run()
                self.fail(name, exc)

        thread = threading.Thread(target=guarded, name=f"streamer-{name}")
        self._threads.append(thread)
        thread.start()

    def run(self, tick: Callable[[Stats], None] | None = None) -> dict:
        """Run to the end of the input (or a stop) and return the statistics snapshot.

        `tick(stats)` is called about every TICK_S seconds (progress displays) on the calling
        thread. Ctrl-C stops the run cleanly: sinks are finalised; for a file Interrupted is raised.
        """
        self._tick = tick
        self._open_sinks()
        self._start_services()
        runners = [SinkRunner(self, s, q) for s, q in zip(self.sinks, self.queues, strict=True)]
        on_main = [r for r in runners if getattr(r.sink, "main_thread", False)]
        for runner in runners:
            if runner not in on_main:
                self._spawn(f"sink:{runner.sink.name}", lambda r=runner: self._sink_loop(r))
        self._spawn("capture", self._capture_loop)
        inference = self._start_inference()
        try:
            self._main_loop(inference, on_main)
        finally:
            for runner in on_main:  # after an interrupt: still finalised, on this thread
                runner.finish(failed=self._error is not None)
            self._join(inference)
        snapshot = self.stats.snapshot()
        snapshot["stopped_by_person"] = self._person_stop
        if self._error is not None:
            raise self._error
        if self._person_stop and not self.live:
            raise Interrupted(f"interrupted after {self.stats.frames_out} frames; outputs were finalised")
        return snapshot

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

    def _start_services(self) -> None:
        """Sinks that serve clients (the web server) get a thread of their own for their event loop,
        started before the first frame; it ends when the sink is closed."""
        for sink in self.sinks:
            if not hasattr(sink, "serve"):
                continue
            ready = threading.Event()
            self._spawn(f"{sink.name}-server", lambda s=sink, r=ready: s.serve(r, self._stop))
            ready.wait(SERVICE_START_S)
            if getattr(sink, "error", None) is not None or not ready.is_set():
                self.stop()
                for other in self.sinks:
                    other.close(complete=False)
                self._join_threads()
                self.source.close()
                raise self._error or PipelineError(f"sink:{sink.name}", TimeoutError("the server did not start"))

    def _join_threads(self) -> None:
        for t in self._threads:
            t.join()

    def _start_inference(self) -> Future:
        """The inference loop on the model thread; or, with a stage that several pipelines share,
        on a thread of this pipeline that sends each batch's device work to the model thread."""
        if not isinstance(self.processor, SharedStage):
            return worker.submit(self._inference)
        finished: Future = Future()

        def loop() -> None:
            try:
                self._inference()
            finally:
                finished.set_result(None)

        self._spawn("inference", loop)
        return finished

    def _main_loop(self, inference: Future, on_main: list[SinkRunner]) -> None:
        """Serve the main-thread sinks and the progress tick until every stage is done."""
        running = list(on_main)
        while True:
            try:
                for runner in list(running):
                    if not runner.guarded_step(MAIN_POLL_S):
                        running.remove(runner)
                if not running:
                    others_alive = any(t.is_alive() for t in self._threads) or not inference.done()
                    if not others_alive:
                        return
                    time.sleep(POLL_S / 4)
                self._maybe_tick()
            except KeyboardInterrupt:
                self.person_stop()

    def _join(self, inference: Future) -> None:
        while True:
            try:
                inference.result()
                self._join_threads()
                break
            except KeyboardInterrupt:
                self.person_stop()
        self.source.close()
        self._maybe_tick(force=True)

    def _maybe_tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._tick is not None and (force or now - self._last_tick >= TICK_S):
            self._last_tick = now
            self._tick(self.stats)

    # -- stages ----------------------------------------------------------------------------

    def _capture_loop(self) -> None:
        clock: tuple[float, float] | None = None  # (wall, media seconds) of the first frame, when pacing
        try:
            frames = iter(self.source.frames(self._stop))
            while True:
                started = time.perf_counter()
                frame = next(frames, None)
                if frame is None:
                    break
                self.stats.stage("decode", time.perf_counter() - started)
                if self.pace:
                    clock = clock or (time.monotonic(), frame.seconds)
                    delay = clock[0] + frame.seconds - clock[1] - time.monotonic()
                    if delay > PACE_LEAP_S:
                        clock, delay = (time.monotonic(), frame.seconds), 0.0
                    if delay > 0 and self._stop.wait(delay):
                        break
                    frame.capture_time = time.monotonic()
                self.stats.frame_in()
                if not self.frames.put(frame, self._stop):
                    break
        finally:
            self.frames.put_end(END)

    def _keep_audio(self, frame: Frame) -> None:
        with self._lock:
            self._audio_carry.extend(frame.audio)

    def _take_frame(self, timeout: float):
        item = self.frames.get(timeout=timeout)
        if self.live and item is not END:
            with self._lock:
                if self._audio_carry:
                    item.audio[:0] = self._audio_carry
                    self._audio_carry = []
        return item

    def _next_batch(self, carry: list[Frame]) -> list[Frame] | None:
        batch = carry[:1] if carry else []
        carry.clear()
        while len(batch) < self.batch_size:
            try:
                item = self._take_frame(POLL_S)
            except Empty:
                if self._stop.is_set():
                    return None
                continue
            if item is END:
                self.frames.put_end(END)  # leave it for the next call
                break
            if batch and (item.image.shape != batch[0].image.shape or item.focal != batch[0].focal):
                carry.append(item)  # a batch holds one frame size and one focal length (photos of two cameras)
                break
            batch.append(item)
        return batch or None

    def _inference(self) -> None:
        try:
            self._inference_loop()
        except StopRequested:
            self.person_stop()
        except BaseException as exc:  # recorded with its stage like the other threads' errors
            self.fail("inference", exc)
        finally:
            for queue in self.queues:
                queue.put_end(END)

    def _inference_loop(self) -> None:
        pending: deque = deque()  # downloads under way, oldest first
        carry: list[Frame] = []
        self.stabilizer.start()
        while not self._stop.is_set():
            batch = self._next_batch(carry)
            if batch is None:
                break
            started = time.perf_counter()
            for group, download in self._on_model_thread(self._compute, batch):
                self._queue(pending, group, download, started)
        if not self._stop.is_set():  # the end of the input: the frames the stabiliser still holds
            for group, download in self._on_model_thread(self._flush_stabilizer):
                self._queue(pending, group, download, time.perf_counter())
        self._record_cuts(wait=True)
        while pending and not self._stop.is_set():
            self._emit(*pending.popleft())

    def _on_model_thread(self, fn: Callable[..., T], *args) -> T:
        """Device work runs on the model thread: here already, or sent there for a shared stage."""
        return self.processor.call(fn, *args) if isinstance(self.processor, SharedStage) else fn(*args)

    def _compute(self, batch: list[Frame]) -> list[tuple[Ready, PendingDownload]]:
        """A batch's device work: upload, forward pass, stabiliser, pictures, download start."""
        started = time.perf_counter()
        images = self.transfer.upload([f.image for f in batch])
        uploaded = time.perf_counter()
        wants = self.outputs.stage_wants() | self.stabilizer.needs
        maps, meta = self.processor(images, wants, batch[0].focal)
        computed = time.perf_counter()
        ready = self.stabilizer(batch, maps, images, {**meta, "stabilize": self.stabilizer.describe()})
        n = len(batch)
        self.stats.stage("upload", uploaded - started, n)
        self.stats.stage("model", computed - uploaded, n)
        if self.stabilizer.mode != "off":
            self.stats.stage("stabilize", time.perf_counter() - computed, n)
        self._record_cuts(wait=False)
        return [(group, self._render(group)) for group in ready]  # lookahead: earlier frames, or none yet

    def _flush_stabilizer(self) -> list[tuple[Ready, PendingDownload]]:
        return [(group, self._render(group)) for group in self.stabilizer.flush()]

    def _render(self, group: Ready) -> PendingDownload:
        """Outputs of frames whose maps are final, made on the device; their download starts."""
        rendering = time.perf_counter()
        download = self.transfer.download(self.outputs(group.maps, group.images))
        self.stats.stage("render", time.perf_counter() - rendering, len(group.frames))
        return download

    def _queue(self, pending: deque, group: Ready, download: PendingDownload, started: float) -> None:
        pending.append((group.frames, download, group.meta, started))
        if self.live or len(pending) > 1:  # live: at once; files: one batch in flight
            self._emit(*pending.popleft())

    def _record_cuts(self, wait: bool) -> None:
        for cut in self.stabilizer.new_cuts(wait):
            self.stats.scene_cut(cut)

    def _emit(self, batch: list[Frame], download, meta: dict, started: float) -> None:
        waited = time.perf_counter()
        arrays = download.wait()
        done = time.perf_counter()
        self.stats.stage("download", done - waited, len(batch))
        self.stats.stage("inference", done - started, len(batch))
        lease = download.lease
        lease.hold(len(batch) * len(self.sinks))
        lease.release()  # the pipeline's own hold: the sinks' results hold the slot now
        for i, frame in enumerate(batch):
            if not self.sinks:
                self.stats.frame_out(frame.capture_time)
            for maps, queue in zip(self.outputs.split(arrays, i), self.queues, strict=True):
                result = Result(frame, maps, meta, lease.release)
                if not queue.put(result, self._stop):
                    result.done()

    def _sink_loop(self, runner: SinkRunner) -> None:
        while runner.guarded_step(POLL_S):
            pass
