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
from dataclasses import replace
from pathlib import Path

import torch

from streamer import api
from streamer.batch.inputs import container_of
from streamer.batch.report import DONE, FAILED, INTERRUPTED, PENDING, Item, Outcome, Progress
from streamer.batch.resume import (
    COMPLETE,
    FOREIGN,
    STALE,
    SidecarFields,
    claim,
    complete_outcome,
    output_state,
    release,
    runs_on,
    settings_fingerprint,
)
from streamer.config import Config
from streamer.engine import worker
from streamer.engine.device import resolve_device
from streamer.engine.pipeline import Pipeline
from streamer.engine.shared import SharedStage, run_concurrently
from streamer.engine.stats import Stats
from streamer.engine.threads import ThreadBudget
from streamer.errors import Interrupted, SourceError, StreamerError

log = logging.getLogger(__name__)


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
        self.where = runs_on(cfg)
        self._lock = threading.Lock()
        self._running: dict[str, tuple[Pipeline, Stats]] = {}
        self._stopping = False

    def run(self, item: Item) -> Outcome:
        """Transcode one input, unless its output is complete already; never raises: a failure
        is the outcome's reason, so one bad file does not stop the others."""
        started = time.monotonic()
        item = self.as_made_here(item)
        try:
            state = output_state(Path(item.output), item.record)  # now: a dead worker's retry finds its own leftovers
            if state == COMPLETE:  # e.g. a retry after a crash
                return complete_outcome(item, Path(item.output))
            frames, damage = self._transcode(item, state)
        except Interrupted as exc:
            return Outcome.of(item, INTERRUPTED, exc.message, seconds=time.monotonic() - started)
        except StreamerError as exc:
            return Outcome.of(item, FAILED, exc.one_line(), seconds=time.monotonic() - started)
        except Exception as exc:  # a bug or an odd file: reported with the file, the batch goes on
            log.debug("%s failed", item.input, exc_info=exc)
            return Outcome.of(item, FAILED, f"unexpected {type(exc).__name__}: {exc}")
        status = FAILED if damage else DONE  # a damaged input: its output is complete, and it is said
        return Outcome.of(item, status, damage or "", frames, time.monotonic() - started)

    def as_made_here(self, item: Item) -> Item:
        """The item with the settings hash of the device and precision this worker's model runs in
        (the planner guessed them from its own machine, which on a cluster may have no GPU)."""
        settings = settings_fingerprint(self.cfg, container_of(Path(item.output)), self.where)
        return replace(item, record={**item.record, "settings": settings})

    def _transcode(self, item: Item, state: str) -> tuple[int, str | None]:
        """-> (frames written, the input's damage report or None), the output being in `state`. The
        output is claimed first, and the claim taken back if nothing was written (see batch/resume.py)."""
        cfg = self.cfg.model_copy(deep=True)
        cfg.source.uri, cfg.source.live = item.input, False
        cfg.output.path = output = Path(item.output)
        cfg.output.overwrite = cfg.output.overwrite or item.replace or state == STALE
        output.parent.mkdir(parents=True, exist_ok=True)
        if cfg.output.overwrite or state != FOREIGN:
            claim(output, item.record)
        try:
            return self._run_pipeline(item, cfg)
        finally:
            release(output, item.record)

    def _run_pipeline(self, item: Item, cfg: Config) -> tuple[int, str | None]:
        fields = SidecarFields(item.record)
        folder = container_of(Path(item.output)) == "images"  # images: named after the input, dots and all
        sink = api.file_sink(cfg, item.output, [item.input], self.threads.encode, fields, folder)
        api.check_processor_format(cfg, [sink])
        job = api.prepare(cfg, [sink], stage=self.stage)
        fields.source = job.source
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
        api.check_range(job, result)
        try:
            api.check_damage(job, result)
        except SourceError as exc:
            return result["frames_out"], exc.one_line()
        return result["frames_out"], None

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
        name = api.model_name(cfg.model)
        announce(f"loading {name} ({where}) ..." if name else f"processor null, no model ({where}) ...")
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
