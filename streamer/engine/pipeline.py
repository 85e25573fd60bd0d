"""source -> [capture thread] -> queue -> [model thread] -> queues -> [one thread per sink].

The capture side and the frames queue are engine/intake.py's; this module starts the threads.

The model runs on the process's one model thread (engine/worker.py), where it was loaded, so
the CPU keeps a single OpenMP pool (a file's lanes, below, each have one of their share). (A
`SharedStage` is fed by several pipelines at once: each pipeline's loop runs on a thread of its
own and sends only each batch's device work to the model thread.) The main thread, which calls `run()`, handles signals and
runs the sinks that must live on it (GUI windows: macOS allows them only there). Ownership
otherwise follows concurrent.futures: named, non-daemon threads for capture and sinks, the first
exception recorded with its stage, the others stopped through an Event plus end-of-stream
sentinels, all joined, the error re-raised in the caller's thread. `stop()` is idempotent.

Live sources hand each result to the sinks as soon as its download is complete; files keep one
batch in flight so the next batch computes while the last one downloads. On the CPU, when torch's
pool is one thread, the finisher's thread (engine/finish.py) makes each batch's maps, stabiliser
and pictures while the model computes the next, and hands the results out itself. A file on the
CPU may run its forward passes in lanes (engine/lanes.py): the next batches start while the oldest
computes, and batches are finished in order as the oldest completes. A person's stop (a
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
from concurrent.futures import Future, wait
from functools import partial
from typing import Protocol, TypeVar

import torch

from streamer.engine import worker
from streamer.engine.device import DeviceTransfer, PendingDownload
from streamer.engine.finish import DEPTH as FINISH_DEPTH
from streamer.engine.finish import Finisher, finishes_apart
from streamer.engine.intake import Intake
from streamer.engine.lanes import Lanes
from streamer.engine.queues import END, StageQueue
from streamer.engine.shared import SharedStage
from streamer.engine.sink_runner import SinkRunner, open_sinks
from streamer.engine.stats import Stats
from streamer.errors import ConfigError, Interrupted, PipelineError, StopRequested
from streamer.focal import Focal
from streamer.processors.outputs import Looks, Outputs
from streamer.processors.stabilize_stage import Ready, StabilizeStage
from streamer.types import Frame, Result

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_S = 0.1
MAIN_POLL_S = 0.01  # how often the main thread looks at its sinks (GUI events stay responsive)
TICK_S = 0.25
SERVICE_START_S = 10.0
STOP_WAIT_S = 0.5  # after a stop, how long the outputs wait for the model's batch in flight
MapsOrLater = dict[str, torch.Tensor] | Callable[[], dict[str, torch.Tensor]]
LOOKS = "_picture_settings"  # a batch's snapshot of the live settings, carried in its meta to the render


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
        calibration=None,
        lanes: int = 1,
        lane_threads: int = 1,
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
        # forward passes at once: one for live sources (a frame would wait for two) and shared stages
        self.lanes = 1 if self.live or isinstance(processor, SharedStage) else lanes
        self.lane_threads = lane_threads  # torch's pool in each lane
        self.stats = stats or Stats()
        self.stats.detects_cuts = self.stabilizer.mode != "off"
        self.transfer = DeviceTransfer(processor.device, pinned_memory, cuda_stream)
        self.outputs = Outputs(sinks, calibration)
        self._stop = threading.Event()
        self.intake = Intake(source, self.stats, self._stop, batch_size, queue_size, pace)
        self.frames, self.batch_size = self.intake.frames, self.intake.batch_size
        self.queues = [
            StageQueue(queue_size, "latest" if s.live else "block", s.name, on_drop=Result.done) for s in sinks
        ]
        for q in (self.frames, *self.queues):
            self.stats.queue_depths[q.name] = q.__len__
            self.stats.drop_counters[q.name] = lambda q=q: q.dropped
        self._person_stop = False
        self._error: PipelineError | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._tick: Callable[[Stats], None] | None = None
        self._last_tick = 0.0

    # -- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        """End the run now: the sinks finish with what they hold, not after the batch the model is on."""
        self._stop.set()
        self.frames.close()
        for queue in self.queues:
            queue.close()  # results still to come are refused (and released)
            queue.put_end(END)

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
        open_sinks(self.sinks, self.source, self.stats)
        self._start_services()
        runners = [SinkRunner(self, s, q, i == 0) for i, (s, q) in enumerate(zip(self.sinks, self.queues, strict=True))]
        on_main = [r for r in runners if getattr(r.sink, "main_thread", False)]
        for runner in runners:
            if runner not in on_main:
                self._spawn(f"sink:{runner.sink.name}", lambda r=runner: r.run(POLL_S))
        self._spawn("capture", self.intake.capture)
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
                    model_busy = not (inference.done() or self._stop.is_set())  # a stop waits for no batch
                    others_alive = any(t.is_alive() for t in self._threads) or model_busy
                    if not others_alive:
                        return
                    time.sleep(POLL_S / 4)
                self._maybe_tick()
            except KeyboardInterrupt:
                self.person_stop()

    def _join(self, inference: Future) -> None:
        """Wait for every thread; after a stop, for the model's batch in flight only STOP_WAIT_S:
        its results are refused anyway, and a forward pass (or a compile) can take long."""
        while True:
            try:
                while not inference.done():
                    if self._stop.is_set():
                        wait([inference], timeout=STOP_WAIT_S)
                        break
                    wait([inference], timeout=POLL_S)
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

    def _inference(self) -> None:
        # live: one batch unfinished at most, so a frame never waits behind two others' pictures
        depth = 1 if self.live else FINISH_DEPTH
        finisher = Finisher(self._stop, self._finish_failed, depth) if finishes_apart(self.transfer.device) else None
        try:
            self._inference_loop(finisher)
        except StopRequested:
            self.person_stop()
        except BaseException as exc:  # recorded with its stage like the other threads' errors
            self.fail("inference", exc)
        finally:
            if finisher is not None:
                finisher.close()  # its batches reach the queues before the end does
            for queue in self.queues:
                queue.put_end(END)

    def _inference_loop(self, finisher: Finisher | None) -> None:
        pending: deque = deque()  # on a GPU: downloads under way, oldest first
        lanes = Lanes(self.lanes, self._stop)
        carry: list[Frame] = []
        self.stabilizer.start()
        warm_up = getattr(self.processor, "warm_up", None)  # --compile: compile before the first frame
        if warm_up is not None:
            self._on_model_thread(warm_up, self.batch_size)
        deferred = finisher is not None
        while not self._stop.is_set():
            batch = self.intake.next_batch(carry, POLL_S)
            if batch is None:
                break
            started = time.perf_counter()
            looks = self.outputs.snapshot()  # the live settings, read once per batch, in order
            if self.lanes == 1:
                computed = self._on_model_thread(self._compute, batch, deferred, looks)
                self._finish(finisher, pending, started, self._stabilize_and_render, batch, *computed)
                continue
            lanes.submit(batch, started, self._in_lane, batch, deferred, looks)
            if lanes.full():
                self._finish_oldest(finisher, pending, lanes)
        while lanes and not self._stop.is_set():  # the end of the input: the lanes' last batches
            self._finish_oldest(finisher, pending, lanes)
        if not self._stop.is_set():  # the end of the input: the frames the stabiliser still holds
            self._finish(finisher, pending, time.perf_counter(), self._flush_stabilizer)
        if finisher is not None:
            finisher.submit(self._record_cuts, True)  # after the last batch's own
            return
        self._record_cuts(wait=True)
        while pending and not self._stop.is_set():
            self._emit(*pending.popleft())

    def _finish_oldest(self, finisher: Finisher | None, pending: deque, lanes: Lanes) -> None:
        """Finish the oldest batch in the lanes once its forward pass is done (none after a stop)."""
        done = lanes.oldest()
        if done is not None:
            batch, started, computed = done
            self._finish(finisher, pending, started, self._stabilize_and_render, batch, *computed)

    @torch.inference_mode()  # grad mode is per thread
    def _in_lane(self, batch: list[Frame], deferred: bool, looks: Looks) -> tuple[MapsOrLater, torch.Tensor, dict]:
        """`_compute` on a lane thread, whose torch pool is sized for this run's lanes: a thread keeps
        the pool size it first ran with, and the lane threads outlive a run."""
        if torch.get_num_threads() != self.lane_threads:
            torch.set_num_threads(self.lane_threads)
        return self._compute(batch, deferred, looks)

    def _on_model_thread(self, fn: Callable[..., T], *args) -> T:
        """Device work runs on the model thread: here already, or sent there for a shared stage."""
        return self.processor.call(fn, *args) if isinstance(self.processor, SharedStage) else fn(*args)

    def _finish_failed(self, exc: BaseException) -> None:
        if isinstance(exc, StopRequested):
            self.person_stop()
        else:
            self.fail("render", exc)

    def _compute(self, batch: list[Frame], deferred: bool, looks: Looks) -> tuple[MapsOrLater, torch.Tensor, dict]:
        """A batch's upload and forward pass, on the model thread or a lane; its maps and pictures follow
        `looks`, the live settings read for it. `deferred`: a stage that can (Metric3DStage.infer)
        leaves its per-pixel maps to the finisher's thread, as a call."""
        started = time.perf_counter()
        images = self.transfer.upload([f.image for f in batch])
        uploaded = time.perf_counter()
        wants = self.outputs.stage_wants(looks) | self.stabilizer.needs
        if deferred and hasattr(self.processor, "infer"):
            inferred, meta = self.processor.infer(images, batch[0].focal)
            maps: MapsOrLater = partial(self.processor.maps, inferred, wants)
        else:
            maps, meta = self.processor(images, wants, batch[0].focal)
        computed = time.perf_counter()
        self.stats.stage("upload", uploaded - started, len(batch))
        self.stats.stage("model", computed - uploaded, len(batch))
        # the snapshot rides in the meta: the stabiliser never groups frames made with two of them
        return maps, images, {**meta, "stabilize": self.stabilizer.describe(), LOOKS: looks}

    def _finish(self, finisher: Finisher | None, pending: deque, started: float, make: Callable, *args) -> None:
        """Stabiliser, pictures and download of a batch (`make(*args)`). On the CPU the finisher's
        thread does them and hands the results out while the model computes the next batch; on a
        GPU the model thread queues them on the device, and files keep one batch in flight so the
        next computes while this one downloads."""
        if finisher is not None:
            finisher.submit(self._emit_all, make, args, started)
            return
        for group, download in self._on_model_thread(make, *args):
            pending.append((group.frames, download, group.meta, started))
            if self.live or len(pending) > 1:
                self._emit(*pending.popleft())

    def _emit_all(self, make: Callable, args: tuple, started: float) -> None:
        for group, download in make(*args):
            self._emit(group.frames, download, group.meta, started)

    @torch.inference_mode()  # also on the finisher's thread: grad mode is per thread
    def _stabilize_and_render(
        self, batch: list[Frame], maps: MapsOrLater, images: torch.Tensor, meta: dict
    ) -> list[tuple[Ready, PendingDownload]]:
        if callable(maps):  # the stage's maps at the output size, made here
            making = time.perf_counter()
            maps = maps()
            self.stats.stage("maps", time.perf_counter() - making, len(batch))
        started = time.perf_counter()
        ready = self.stabilizer(batch, maps, images, meta)
        if self.stabilizer.mode != "off":
            self.stats.stage("stabilize", time.perf_counter() - started, len(batch))
        self._record_cuts(wait=False)
        return [(group, self._render(group)) for group in ready]  # lookahead: earlier frames, or none yet

    @torch.inference_mode()
    def _flush_stabilizer(self) -> list[tuple[Ready, PendingDownload]]:
        return [(group, self._render(group)) for group in self.stabilizer.flush()]

    def _render(self, group: Ready) -> PendingDownload:
        """Outputs of frames whose maps are final; their download starts."""
        rendering = time.perf_counter()
        group.meta = dict(group.meta)
        looks = group.meta.pop(LOOKS)  # the settings these frames' maps were made for; sinks never see it
        download = self.transfer.download(self.outputs(group.maps, group.images, looks, group.meta))
        self.stats.stage("render", time.perf_counter() - rendering, len(group.frames))
        return download

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
