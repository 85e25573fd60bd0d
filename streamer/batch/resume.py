"""What makes a batch resumable: each output's sidecar says what it was made from.

The sinks write their usual sidecar (NAME.json beside a video, metadata.json in a sequence
folder) with one more field, `batch`, given to them by the batch:

    "batch": {"input": "sub/clip.mp4", "input_size": 1234, "input_mtime_ns": 1700000000000000000,
              "input_id": "9c1e...", "settings": "3f2a..."}

`settings` is a hash of every setting that changes what is written (model, focal, output format,
colours, codec, trims, and any section added later), with the device kind and the precision the
model runs in as resolved (`auto` on a GPU is fp16 on CUDA, on a CPU fp32: different numbers), and
none of those that only change how the run goes (which GPU, threads, queues, paths).

An input is the same file when its size, modification time and `input_id` (a hash of its size and
its first and last 64 KiB) agree: where it lies and by which path or root it was reached do not
matter, so a library moved, mounted elsewhere or given through a symlink or another folder is
recognised. A rerun skips an output whose sidecar says `complete` and matches the input and the
settings, wherever under the output folder it is; any other output of a batch is made again,
replacing it; an output the batch did not make is left alone unless --overwrite.

Before a file is run, its sidecar is written as a claim (`complete: false`), so whatever a crash
leaves behind (a renamed video whose final sidecar was never written, a folder of frames) is known
as the batch's and made again, never taken for someone else's file. A damaged input's sidecar
records the `damage`, so every rerun reports it as the first run did.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from streamer.batch.inputs import CONTAINERS, container_of
from streamer.batch.report import FAILED, REPORT_NAME, SKIPPED, Item, Outcome
from streamer.config import Config
from streamer.engine.device import resolve_device, resolve_dtype
from streamer.outcomes import damage_error
from streamer.sinks.base import write_json

# settings that do not change what is written: left out of the fingerprint
RUN_ONLY = {
    "source": {"uri", "live", "pace", "width", "height", "fps"},
    "model": {"local_files_only", "compile"},  # device and precision go in as resolved (runs_on)
    "output": {"path", "overwrite"},
    "engine": None,  # None: the whole section
    "preview": None,
    "virtualcam": None,
    "serve": None,
}
COMPLETE, STALE, FOREIGN, ABSENT = "complete", "stale", "foreign", "absent"
IDENTITY_BYTES = 64 * 1024  # hashed from each end of an input: headers, and indexes kept at the end


def runs_on(cfg: Config) -> tuple[str, str]:
    """(device kind, precision) the model runs in: `auto` resolved here, `cuda:1` is cuda."""
    device = resolve_device(cfg.model.device)
    return device.type, str(resolve_dtype(cfg.model.precision, device)).removeprefix("torch.")


def settings_fingerprint(cfg: Config, container: str, where: tuple[str, str] | None = None) -> str:
    """A short hash of the settings that shape the outputs (paths reduced to file names), with
    the device kind and precision `where` the model runs (default: as resolved on this machine)."""
    data = cfg.model_dump(mode="json")
    for section, keys in RUN_ONLY.items():
        if keys is None:
            data.pop(section, None)
        else:
            for key in keys:
                data.get(section, {}).pop(key, None)
    model = data["model"]
    for key in ("checkpoint", "processor_weights"):
        if model.get(key):
            model[key] = Path(model[key]).name  # the same weights under another folder are the same
    model["device"], model["precision"] = where or runs_on(cfg)
    data["container"] = container
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def input_identity(path: Path, size: int) -> str:
    """A hash of the file's size and its first and last IDENTITY_BYTES: the same file wherever it is."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(IDENTITY_BYTES))
        if size > 2 * IDENTITY_BYTES:
            f.seek(size - IDENTITY_BYTES)
        digest.update(f.read(IDENTITY_BYTES))
    return digest.hexdigest()[:16]


def input_record(path: Path, relative: Path, settings: str) -> dict:
    """The sidecar's `batch` field for an output of `path`."""
    stat = Path(path).stat()
    return {
        "input": relative.as_posix(),
        "input_size": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "input_id": input_identity(Path(path), stat.st_size),
        "settings": settings,
    }


def same_input_and_settings(made: dict, record: dict) -> bool:
    """Everything but the name the input had: that depends on the root it was reached from."""
    return all(made.get(key) == value for key, value in record.items() if key != "input")


def sidecar_path(output: Path) -> Path:
    """Where the sink writes the sidecar of `output` (a video file, or a sequence folder)."""
    output = Path(output)
    return output / "metadata.json" if container_of(output) == "images" else output.with_suffix(".json")


def read_sidecar(output: Path) -> dict | None:
    return read_json(sidecar_path(output))


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def output_state(output: Path, record: dict) -> str:
    """complete (skip it), stale (a batch's, to be made again), foreign (not a batch's), absent."""
    output = Path(output)
    data = read_sidecar(output)
    if data is not None and isinstance(data.get("batch"), dict):
        same = same_input_and_settings(data["batch"], record)
        return COMPLETE if same and data.get("complete") is True and output.exists() else STALE
    if output.is_file() or (output.is_dir() and any(output.iterdir())):
        return FOREIGN
    return ABSENT


def recorded(output: Path) -> tuple[int, str | None]:
    """(frames, damage) a complete output's sidecar records (shown for skipped files)."""
    data = read_sidecar(output) or {}
    return int(data.get("frames", 0)), data.get("damage")


class CompleteOutputs:
    """The batch outputs under a folder by their input's identity, read from the sidecars once, when
    first asked: where an input reached through another root finds the output made for it."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = Path(outdir)
        self._by_input: dict[str, list[Path]] | None = None

    def find(self, record: dict) -> Path | None:
        """A complete output of the same input and settings anywhere under the folder."""
        if self._by_input is None:
            self._by_input = outputs_by_input(self.outdir)
        candidates = self._by_input.get(record["input_id"], [])
        return next((out for out in candidates if output_state(out, record) == COMPLETE), None)


def outputs_by_input(outdir: Path) -> dict[str, list[Path]]:
    """Every batch output under `outdir` by its input's identity, found from the sidecars."""
    found: dict[str, list[Path]] = {}
    for side in sorted(Path(outdir).rglob("*.json")):
        if side.name == REPORT_NAME or side.name.endswith(".partial.json"):
            continue
        made = (read_json(side) or {}).get("batch")
        if not isinstance(made, dict) or not made.get("input_id"):
            continue
        if side.name == "metadata.json":
            output: Path | None = side.parent
        else:
            output = next((o for o in map(side.with_suffix, suffixes()) if o.is_file()), None)
        if output is not None:
            found.setdefault(made["input_id"], []).append(output)
    return found


def suffixes() -> list[str]:
    return [f".{c}" for c in CONTAINERS if c != "images"]


def claim(output: Path, record: dict) -> None:
    """Mark `output` as this batch's before it is made: a crash at any point then leaves an output
    the next run knows as its own (stale, made again), never one it must leave alone as foreign."""
    output = Path(output)
    if container_of(output) == "images":
        output.mkdir(parents=True, exist_ok=True)
    note = "being made by streamer batch; made again by the next run unless this says complete"
    write_json(sidecar_path(output), {"complete": False, "frames": 0, "batch": record, "note": note})


def release(output: Path, record: dict) -> None:
    """After a run that wrote nothing: remove the claim, and the folder it made for a sequence."""
    output, side = Path(output), sidecar_path(Path(output))
    data = read_json(side) or {}
    if data.get("batch") != record or data.get("complete") is not False or data.get("frames"):
        return  # the sink wrote its own sidecar: something was made
    if container_of(output) != "images":
        if not output.exists():
            side.unlink(missing_ok=True)
    elif [p.name for p in output.iterdir()] == [side.name]:
        shutil.rmtree(output, ignore_errors=True)


class SidecarFields(Mapping):
    """The batch's fields for an output's sidecar, read by the sink when it closes: by then the
    source has read its input to the end and knows whether it was damaged, which the sidecar then
    records (`damage`) so that every rerun reports the damage as this run does."""

    def __init__(self, record: dict) -> None:
        self.record = record
        self.source = None  # set once the source is open

    def _fields(self) -> dict:
        damage = getattr(self.source, "damage", None)
        return {"batch": self.record, **({"damage": damage} if damage else {})}

    def __getitem__(self, key: str):
        return self._fields()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())


def complete_outcome(item: Item, output: Path) -> Outcome:
    """A complete output: skipped, or failed as on the run that made it when its input was damaged
    (the same reason and frames on every run)."""
    frames, damage = recorded(output)
    where = "" if Path(output) == Path(item.output) else f" as {output}"  # made from another root
    item = replace(item, output=str(output))
    if damage:
        return Outcome.of(item, FAILED, damage_error(Path(item.input).name, damage, frames).one_line(), frames)
    return Outcome.of(item, SKIPPED, f"complete{where}", frames)
