"""What makes a batch resumable: each output's sidecar says what it was made from.

The sinks write their usual sidecar (NAME.json beside a video, metadata.json in a sequence
folder) with one more field, `batch`, given to them by the batch:

    "batch": {"input": "sub/clip.mp4", "input_size": 1234, "input_mtime_ns": 1700000000000000000,
              "settings": "3f2a..."}

`settings` is a hash of every setting that changes what is written (model, focal, output format,
colours, codec, trims, and any section added later), and none of those that only change how the
run goes (device, threads, queues, paths). A rerun skips an output whose sidecar says `complete`
and matches the input's size and mtime and the settings; any other output of a batch is made
again, replacing it; an output the batch did not make is left alone unless --overwrite.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from streamer.config import Config

# settings that do not change what is written: left out of the fingerprint
RUN_ONLY = {
    "source": {"uri", "live", "pace", "width", "height", "fps"},
    "model": {"device", "local_files_only", "compile"},
    "output": {"path", "overwrite"},
    "engine": None,  # None: the whole section
    "preview": None,
    "virtualcam": None,
    "serve": None,
}
COMPLETE, STALE, FOREIGN, ABSENT = "complete", "stale", "foreign", "absent"


def settings_fingerprint(cfg: Config, container: str) -> str:
    """A short hash of the settings that shape the outputs (paths reduced to file names)."""
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
    data["container"] = container
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def input_record(path: Path, relative: Path, settings: str) -> dict:
    """The sidecar's `batch` field for an output of `path`."""
    stat = Path(path).stat()
    return {
        "input": relative.as_posix(),
        "input_size": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "settings": settings,
    }


def sidecar_path(output: Path) -> Path:
    """Where the sink writes the sidecar of `output` (a video file, or a sequence folder)."""
    output = Path(output)
    return output.with_suffix(".json") if output.suffix else output / "metadata.json"


def read_sidecar(output: Path) -> dict | None:
    try:
        data = json.loads(sidecar_path(output).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def output_state(output: Path, record: dict) -> str:
    """complete (skip it), stale (a batch's, to be made again), foreign (not a batch's), absent."""
    output = Path(output)
    data = read_sidecar(output)
    if data is not None and isinstance(data.get("batch"), dict):
        made = data["batch"]
        same = all(made.get(key) == value for key, value in record.items() if key != "input")
        return COMPLETE if same and data.get("complete") is True and output.exists() else STALE
    if output.is_file() or (output.is_dir() and any(output.iterdir())):
        return FOREIGN
    return ABSENT


def frames_of(output: Path) -> int:
    """The frame count a complete output's sidecar records (shown for skipped files)."""
    data = read_sidecar(output) or {}
    return int(data.get("frames", 0))
