"""Which files a batch reads, and where each output goes: the input tree mirrored under OUTDIR.

Inputs are files, folders (searched recursively for video suffixes), glob patterns, or text files
of paths (`@list.txt`, or any existing `.txt`; one path a line, lines starting with `#` ignored, relative
paths are read from the list's folder so a list travels with its videos). Outputs keep each
input's place relative to the common root of the inputs, so two `clip.mp4` in different
folders never meet, and a rerun finds every output where it left it. The output folder may lie
inside the input tree (its files are then never read back as inputs) but may not be its root.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from streamer.errors import ConfigError

VIDEO_INPUT_SUFFIXES = frozenset(
    {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv", ".wmv"}
    | {".3gp", ".ogv", ".mxf", ".vob"}
)
CONTAINERS = ("mp4", "mkv", "mov", "webm", "images")


@dataclass
class Found:
    """Input files in the order given (no repeats), the folders their tree starts at, and the
    arguments that named nothing (reported as failed, the rest go on)."""

    files: list[Path] = field(default_factory=list)
    anchors: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    root: Path | None = None  # the common root of the anchors: outputs mirror the tree below it

    def add(self, path: Path, anchor: Path) -> None:
        path = path.resolve()
        if path not in self._seen:
            self._seen.add(path)
            self.files.append(path)
            self.anchors.append(anchor.resolve())

    def __post_init__(self) -> None:
        self._seen: set[Path] = set()


def find_inputs(args: list[str], outdir: Path) -> Found:
    """Files, folders, globs and lists -> video files and their common root. Files inside an
    output folder that lies in the input tree are left out: a batch never reads its outputs."""
    found = Found()
    for arg in args:
        _expand(arg, found, Path.cwd(), nested=False)
    found.root = common_root(found.anchors)
    out = Path(outdir).resolve()
    if found.root is not None and found.root == out:
        raise ConfigError(
            f"the output folder {outdir} is the inputs' folder", hint=f"choose another, e.g. {found.root}/depth"
        )
    if found.root is not None and out.is_relative_to(found.root):
        found.files = [f for f in found.files if not f.is_relative_to(out)]
    return found


def _expand(arg: str, found: Found, base: Path, nested: bool) -> None:
    path = Path(arg) if Path(arg).is_absolute() else base / arg
    if not nested and (arg.startswith("@") or (arg.endswith(".txt") and path.is_file())):
        _read_list(Path(arg[1:]) if arg.startswith("@") else path, found, base)
    elif glob.has_magic(arg):
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            found.missing.append(arg)
        anchor = glob_root(path)
        for match in map(Path, matches):
            if match.is_dir():
                _walk(match, found)
            else:
                found.add(match, anchor)
    elif path.is_dir():
        _walk(path, found)
    elif path.exists():
        found.add(path, path.parent)
    else:
        found.missing.append(arg)


def _read_list(listing: Path, found: Found, base: Path) -> None:
    listing = listing if listing.is_absolute() else base / listing
    try:
        lines = listing.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        found.missing.append(f"@{listing}")
        return
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            _expand(entry, found, listing.parent, nested=True)


def _walk(folder: Path, found: Found) -> None:
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in VIDEO_INPUT_SUFFIXES and path.is_file():
            found.add(path, folder)


def glob_root(pattern: Path) -> Path:
    """The folder a pattern's matches are relative to: its parts before the first wildcard."""
    parts: list[str] = []
    for part in pattern.parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path.cwd()


def common_root(anchors: list[Path]) -> Path | None:
    """The deepest folder above every anchor; None when there is none (two drives on Windows)."""
    try:
        return Path(os.path.commonpath([str(a) for a in anchors])) if anchors else None
    except ValueError:
        return None


def relative_name(path: Path, root: Path | None) -> Path:
    if root is not None and path.is_relative_to(root):
        return path.relative_to(root)
    return Path(*path.parts[1:])  # no common root: the path below its drive


def default_container(fmt: str) -> str:
    """Float formats are image sequences, metric16 lossless FFV1 in .mkv, pictures H.264 in .mp4."""
    return {"exr": "images", "npz": "images", "metric16": "mkv"}.get(fmt, "mp4")


def check_container(fmt: str, container: str) -> None:
    if fmt in ("exr", "npz") and container != "images":
        raise ConfigError(f"format {fmt} is written as image sequences", hint="leave out --container or use images")
    if fmt == "metric16" and container not in ("mkv", "images"):
        raise ConfigError("metric16 is lossless FFV1 in .mkv or 16-bit PNG sequences", hint="use --container mkv")


def output_for(relative: Path, outdir: Path, container: str) -> Path:
    """`sub/clip.mp4` -> OUTDIR/sub/clip.mkv (videos) or OUTDIR/sub/clip/ (image sequences)."""
    stem = outdir / relative.with_suffix("")
    return stem if container == "images" else stem.with_name(f"{stem.name}.{container}")


def container_of(output: Path) -> str:
    """The container an output was planned in (the inverse of output_for's choice): a folder of
    images unless it ends in a video container's suffix (`my.take` is a folder)."""
    suffix = Path(output).suffix.lstrip(".")
    return suffix if suffix in CONTAINERS and suffix != "images" else "images"
