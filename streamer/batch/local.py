"""One machine: one model per GPU (or one on the CPU), loaded once, several files in flight each.

A `FileWorker` holds a loaded model as a `SharedStage` and runs files through it, each as the
`transcode` command would (api.file_sink, api.prepare, api.make_pipeline): the same sinks, the
same partial names and sidecars, the same frames. Several files run at once so their decoding
and encoding overlap the model's work; the model thread takes their batches in turn. The local
scheduler feeds the workers from `run_concurrently` (engine/shared.py); on a Ray cluster each
actor is a FileWorker (batch/cluster.py), so local and cluster outputs are the same.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from streamer import api
from streamer.batch.inputs import CONTAINERS
from streamer.batch.report import DONE, FAILED, INTERRUPTED, PENDING, SKIPPED, Item, Outcome, Progress
from streamer.batch.resume import COMPLETE, frames_of, output_state
from streamer.config import Config
from streamer.engine import worker
from streamer.engine.device import resolve_device
from streamer.engine.pipeline import Pipeline
from streamer.engine.shared import SharedStage, run_concurrently
from streamer.engine.stats import Stats
from streamer.engine.threads import ThreadBudget
from streamer.errors import Interrupted, StreamerError

log = logging.getLogger(__name__)
VIDEO_OUTPUTS = {f".{c}" for c in CONTAINERS if c != "images"}


class FileWorker:
    """A model, loaded once on its model thread `key`, and the files that run through it."""

    def __init__(self, config: dict, device: str | None = None, key: str = "") -> None:
        cfg = Config.model_validate(config)
        if device is not None:
            cfg.model.device = device
        self.cfg = cfg
        self.threads = ThreadBudget.plan(resolve_device(cfg.model.device).type, cfg.engine.threads)
        comfy = cfg.output.format.startswith("comfy")
        stage = worker.on_model_thread(key, api.load_stage, cfg.model, comfy, self.threads.torch)
        self.stage = SharedStage(stage, key)
        self._lock = threading.Lock()
        self._running: dict[str, tuple[Pipeline, Stats]] = {}
        self._stopping = False

    def run(self, item: Item) -> Outcome:
        """Transcode one input, unless its output is complete already; never raises: a failure
        is the outcome's reason, so one bad file does not stop the others."""
        started = time.monotonic()
        try:
            if output_state(Path(item.output), item.record) == COMPLETE:  # e.g. a retry after a crash
                return Outcome.of(item, SKIPPED, "complete", frames_of(Path(item.output)))
            frames = self._transcode(item)
        except Interrupted as exc:
            return Outcome.of(item, INTERRUPTED, exc.message, seconds=time.monotonic() - started)
        except StreamerError as exc:
            return Outcome.of(item, FAILED, exc.one_line(), seconds=time.monotonic() - started)
        except Exception as exc:  # a bug or an odd file: reported with the file, the batch goes on
            log.debug("%s failed", item.input, exc_info=exc)
            return Outcome.of(item, FAILED, f"unexpected {type(exc).__name__}: {exc}")
        return Outcome.of(item, DONE, frames=frames, seconds=time.monotonic() - started)

    def _transcode(self, item: Item) -> int:
        cfg = self.cfg.model_copy(deep=True)
        cfg.source.uri, cfg.source.live = item.input, False
        cfg.output.path = Path(item.output)
        cfg.output.overwrite = cfg.output.overwrite or item.replace
        Path(item.output).parent.mkdir(parents=True, exist_ok=True)
        folder = Path(item.output).suffix.lower() not in VIDEO_OUTPUTS  # images: named after the input, dots and all
        sink = api.file_sink(cfg, item.output, [item.input], self.threads.encode, {"batch": item.record}, folder)
        api.check_processor_format(cfg, [sink])
        job = api.prepare(cfg, [sink], stage=self.stage)
        stats = Stats()
        try:
            pipeline = api.make_pipeline(job.source, job.stage, job.sinks, cfg, stats)
        except BaseException:
            job.source.close()
            raise
        with self._lock:
            self._running[item.relative] = (pipeline, stats)
            if self._stopping:
                pipeline.person_stop()  # runs to an immediate, interrupted end: nothing half-made
        try:
            result = pipeline.run()
        finally:
            with self._lock:
                self._running.pop(item.relative, None)
        api.check_damage(job, result)
        return result["frames_out"]

    def progress(self) -> dict[str, int]:
        """Frames written so far by each file in flight."""
        with self._lock:
            return {name: stats.frames_out for name, (_, stats) in self._running.items()}

    def stop(self) -> None:
        """Ctrl-C: every file in flight ends as interrupted (outputs finalised), none starts."""
        with self._lock:
            self._stopping = True
            running = [pipeline for pipeline, _ in self._running.values()]
        for pipeline in running:
            pipeline.person_stop()

    def pid(self) -> int:
        """The process the model lives in (a supervisor, or a test, may want to know)."""
        return os.getpid()


def model_devices(device: str) -> list[str | None]:
    """One model per GPU when the device is left to choose and there are several; else one."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [None]


def run_local(
    items: list[Item],
    cfg: Config,
    workers: int,
    progress: Callable[[Progress], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> tuple[list[Outcome], bool]:
    """Run `items` on this machine, `workers` files in flight per model -> (outcomes, interrupted)."""
    devices = model_devices(cfg.model.device)
    if announce is not None:
        files = f"{workers} file{'s' if workers > 1 else ''} at a time"
        where = f"one per GPU on {len(devices)} GPUs, {files} each" if len(devices) > 1 else files
        announce(f"loading {cfg.model.backbone} ({where}) ...")
    config = cfg.model_dump(mode="json")
    models = [FileWorker(config, device, device or "") for device in devices]
    busy = [0] * len(models)
    placed: dict[str, int] = {}
    outcomes: list[Outcome] = []

    def jobs() -> Iterator[tuple[str, Callable[[], Outcome]]]:
        for item in items:
            index = min(range(len(models)), key=busy.__getitem__)
            busy[index] += 1
            placed[item.relative] = index
            yield item.relative, lambda item=item, model=models[index]: model.run(item)

    def tick() -> None:
        if progress is not None:
            progress(progress_of(items, outcomes, [m.progress() for m in models]))

    def stop_all() -> None:
        for model in models:
            model.stop()

    interrupted = False
    try:
        for name, outcome in run_concurrently(jobs(), workers * len(models), stop_all, tick):
            busy[placed[name]] -= 1
            outcomes.append(outcome if isinstance(outcome, Outcome) else crashed(items, name, outcome))
    except KeyboardInterrupt:
        interrupted = True
    finished = {o.relative for o in outcomes}
    outcomes += [Outcome.of(item, PENDING) for item in items if item.relative not in finished]
    return outcomes, interrupted


def crashed(items: list[Item], name: str, exc: BaseException) -> Outcome:
    item = next(i for i in items if i.relative == name)
    return Outcome.of(item, FAILED, f"unexpected {type(exc).__name__}: {exc}")


def progress_of(items: list[Item], outcomes: list[Outcome], active: list[dict[str, int]]) -> Progress:
    """Files and frames: finished files count whole, files in flight by the frames written so far."""
    finished = {o.relative for o in outcomes}
    running = {name: frames for part in active for name, frames in part.items() if name not in finished}
    done_frames = sum(o.frames for o in outcomes)
    total = done_frames + sum(i.frames or 0 for i in items if i.relative not in finished)
    return Progress(
        files_total=len(items),
        files_finished=len(outcomes),
        failed=sum(o.status == FAILED for o in outcomes),
        frames_done=done_frames + sum(running.values()),
        frames_total=total,
        active=running,
    )
