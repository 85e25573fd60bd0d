"""Past one machine: a Ray actor per GPU (or per node on a CPU cluster) holds the model, a task per file.

Each actor is a `FileWorker` (batch/local.py), so a file is made exactly as on one machine. The
driver keeps `workers` files in flight per actor and gathers their progress into one report.
When an actor's process dies, Ray starts it again (the model is loaded anew) and runs the files
it had again (`max_restarts`, `max_task_retries`); a file that a dead worker had finished is
found complete and skipped. Inputs and the output folder must be at the same path on every node
(a shared file system). Ray is an optional extra: `pip install 'streamer[ray]'`.
"""

from __future__ import annotations

import logging
import signal
import uuid
from collections import deque
from collections.abc import Callable
from types import ModuleType
from typing import Any

from streamer.batch.local import FileWorker, progress_of
from streamer.batch.report import FAILED, PENDING, Item, Outcome, Progress
from streamer.config import Config
from streamer.errors import ConfigError

log = logging.getLogger(__name__)
RETRIES = 3  # restarts of a dead actor, and runs of a file whose actor died
TICK_S = 0.25
STOP_WAIT_S = 120.0  # after Ctrl-C: how long files in flight get to finalise their outputs
ACTOR_PREFIX = "streamer-batch-"


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray, which is not installed", hint="pip install 'streamer[ray]'") from None
    return ray


def run_on_ray(
    items: list[Item],
    cfg: Config,
    workers: int,
    address: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> tuple[list[Outcome], bool]:
    """Run `items` on a Ray cluster -> (outcomes, interrupted). Joins the cluster at `address`
    (None: the one this process is connected to, the one `ray start` made on this machine, or a
    new one here), and leaves it as it was."""
    ray = import_ray()
    joined = not ray.is_initialized()
    if joined:
        join_cluster(ray, address)
    try:
        actors = start_actors(ray, cfg, workers, len(items), announce)
        try:
            return Driver(ray, actors, workers, progress).run(items)
        finally:
            for actor in actors:
                ray.kill(actor)
    finally:
        if joined:
            ray.shutdown()


def join_cluster(ray: ModuleType, address: str | None) -> None:
    """ray.init, keeping this process's SIGTERM handler: Ray installs its own, which would end the
    driver without letting the files in flight finalise their outputs."""
    previous = signal.getsignal(signal.SIGTERM)
    ray.init(address=address or None, log_to_driver=True)
    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except ValueError:  # not the main thread: Ray's handler stays
            pass


def start_actors(ray: ModuleType, cfg: Config, workers: int, files: int, announce) -> list[Any]:
    """One actor per GPU in the cluster, or one per node without GPUs (no more than files)."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    count = gpus or sum(1 for node in ray.nodes() if node.get("Alive"))
    count = max(1, min(count, files))
    resources: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": 1, "scheduling_strategy": "SPREAD"}
    if announce is not None:
        kind = "GPU" if gpus else "node"
        files = f"{workers} file{'s' if workers > 1 else ''} at a time"
        announce(f"ray: {count} model worker{'s' if count > 1 else ''}, one per {kind}, {files} each ...")
    remote = ray.remote(FileWorker)
    token = uuid.uuid4().hex[:8]
    config = cfg.model_dump(mode="json")
    return [
        remote.options(
            name=f"{ACTOR_PREFIX}{token}-{i}",
            max_restarts=RETRIES,
            max_task_retries=RETRIES,
            max_concurrency=workers + 2,  # its files, plus progress and control calls
            **resources,
        ).remote(config)
        for i in range(count)
    ]


class Driver:
    """Hands files to actors as they have room, gathers outcomes and progress on this thread."""

    def __init__(self, ray: ModuleType, actors: list[Any], workers: int, progress) -> None:
        self.ray, self.actors, self.workers, self.progress = ray, actors, workers, progress
        self.inflight: dict[Any, tuple[int, Item]] = {}  # task ref -> (actor, item)
        self.load = [0] * len(actors)
        self.polls: dict[int, Any] = {}  # actor -> its pending progress call
        self.active: dict[int, dict[str, int]] = {}
        self.outcomes: list[Outcome] = []

    def run(self, items: list[Item]) -> tuple[list[Outcome], bool]:
        waiting = deque(items)
        interrupted = False
        try:
            while waiting or self.inflight:
                self.submit(waiting)
                self.collect(TICK_S)
                self.poll(items)
        except KeyboardInterrupt:
            interrupted = True
            self.stop()
        if self.polls:  # answered before the actors go, so Ray has no call to retry
            self.ray.wait(list(self.polls.values()), num_returns=len(self.polls), timeout=TICK_S * 4)
        finished = {o.relative for o in self.outcomes}
        pending = [Outcome.of(item, PENDING) for item in items if item.relative not in finished]
        return self.outcomes + pending, interrupted

    def submit(self, waiting: deque) -> None:
        for index, actor in enumerate(self.actors):
            while self.load[index] < self.workers and waiting:
                item = waiting.popleft()
                self.inflight[actor.run.remote(item)] = (index, item)
                self.load[index] += 1

    def collect(self, timeout: float) -> None:
        refs = list(self.inflight)
        if not refs:
            return
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for ref in ready:
            index, item = self.inflight.pop(ref)
            self.load[index] -= 1
            try:
                self.outcomes.append(self.ray.get(ref))
            except self.ray.exceptions.RayError as exc:  # the actor died more often than it may restart
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.outcomes.append(Outcome.of(item, FAILED, f"worker lost: {reason}"))

    def poll(self, items: list[Item]) -> None:
        """Ask each actor for its files' frames; an answer not back yet is asked again later."""
        for index, actor in enumerate(self.actors):
            ref = self.polls.pop(index, None)
            if ref is not None and not self.ray.wait([ref], timeout=0)[0]:
                self.polls[index] = ref
                continue
            if ref is not None:
                try:
                    self.active[index] = self.ray.get(ref)
                except self.ray.exceptions.RayError:
                    self.active[index] = {}
            if self.load[index]:  # nobody to ask once an actor has no files
                self.polls[index] = actor.progress.remote()
        if self.progress is not None:
            self.progress(progress_of(items, self.outcomes, list(self.active.values())))

    def stop(self) -> None:
        """Ctrl-C: the actors stop their files (outputs finalised as partial), and are waited for."""
        for actor in self.actors:
            actor.stop.remote()
        try:
            while self.inflight:
                self.collect(STOP_WAIT_S)
                if self.inflight:
                    log.warning("%d files did not stop in time", len(self.inflight))
                    break
        except KeyboardInterrupt:  # a second Ctrl-C: leave at once
            pass
