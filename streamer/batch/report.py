"""What a batch plans, what each file came to, and the JSON report written at the end.

Plain dataclasses, so that they travel to Ray workers and back as they are.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DONE, SKIPPED, FAILED, INTERRUPTED, PENDING = "done", "skipped", "failed", "interrupted", "pending"
STATUSES = (DONE, SKIPPED, FAILED, INTERRUPTED, PENDING)
REPORT_NAME = "batch-report.json"


@dataclass(frozen=True)
class Item:
    """One input to transcode: where it is, its name in the mirrored tree, where its output goes.

    `record` is the sidecar's `batch` field (input size, mtime, settings); `replace` lets the
    output replace an older one; `frames` is the input's frame count when known (progress)."""

    input: str
    relative: str
    output: str
    record: dict
    replace: bool = False
    frames: int | None = None


@dataclass
class Outcome:
    """How one input ended: done, skipped (complete already), failed (with the reason),
    interrupted (its output kept as NAME.partial.EXT), or pending (never started)."""

    relative: str
    input: str
    output: str
    status: str
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.status == DONE and self.seconds > 0 else 0.0

    @classmethod
    def of(cls, item: Item, status: str, reason: str = "", frames: int = 0, seconds: float = 0.0) -> Outcome:
        return cls(item.relative, item.input, item.output, status, reason, frames, seconds)


@dataclass
class Progress:
    """What a progress display shows: files and frames so far, over what is known in all."""

    files_total: int
    files_finished: int = 0
    failed: int = 0
    frames_done: int = 0
    frames_total: int = 0
    active: dict[str, int] = field(default_factory=dict)  # input (relative) -> frames written so far


@dataclass
class BatchReport:
    outdir: str
    backend: str
    settings: str
    workers: int
    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False
    started: float = field(default_factory=time.time)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        return {status: sum(o.status == status for o in self.outcomes) for status in STATUSES}

    @property
    def frames(self) -> int:
        return sum(o.frames for o in self.outcomes if o.status == DONE)

    def to_dict(self) -> dict:
        return {
            "outdir": self.outdir,
            "backend": self.backend,
            "settings": self.settings,
            "workers": self.workers,
            "interrupted": self.interrupted,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(self.seconds, 3),
            "counts": self.counts(),
            "frames": self.frames,
            "files": [{**asdict(o), "fps": round(o.fps, 3), "seconds": round(o.seconds, 3)} for o in self.outcomes],
        }

    def write(self, path: Path) -> None:
        """Written whole under a temporary name, then renamed: a reader never sees half a report."""
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
