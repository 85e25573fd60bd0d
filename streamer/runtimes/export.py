"""The network as ONNX, exported once from the checkpoint into a cache beside the weights.

The cache is never a second source of truth: a graph is found by a key made of everything that
changes it (the checkpoint's sha256, backbone, input size, the graph's precision, the exporter's
torch version and opset), so new weights or another input size export again, and a stale graph
is never picked up. The compiled forms the runtimes keep (OpenVINO blobs, TensorRT engines) live
in the same folder under their runtime's version (runtime_cache_dir).

The exporter is torch.onnx.export(dynamo=True): it exports our network as is (outputs within
3e-6 of eager); the legacy tracer fails on the position-embedding resize. The batch dimension
stays dynamic, so the engine's batches run through one graph. Graphs over 2 GB (vit-giant2)
keep their weights as ONNX external data next to the .onnx file. A graph is written to a temporary
folder and renamed into place, so an interrupted export leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from streamer.config import MAX_BATCH
from streamer.errors import ModelError

log = logging.getLogger(__name__)

OPSET = 18
GRAPH_PRECISION = "fp32"  # the graph is fp32; runtimes lower it themselves (OpenVINO bf16, TensorRT fp16)
EXTERNAL_DATA_BYTES = 1 << 30  # under protobuf's 2 GB limit with room to spare
# The oldest torch whose exporter makes a graph of this network the runtimes run (measured: torch 2.4
# has no dynamo=True export, and 2.6's graph holds a Resize that ONNX Runtime refuses); an older
# torch says so in one line, and `--runtime auto` then runs torch itself (runtimes/__init__.py)
EXPORT_MIN_TORCH = "2.14"


def export_unsupported() -> str | None:
    """Why this torch cannot export the network for the runtimes, or None when it can."""
    if torch.__version__ < EXPORT_MIN_TORCH:  # TorchVersion compares as a version, not as text
        return f"exporting the network to ONNX needs torch >= {EXPORT_MIN_TORCH} (this is {torch.__version__})"
    return None


OUTPUTS = ("depth", "confidence", "normal")


class LastIteration(torch.nn.Module):
    """The network with the last GRU iteration's maps as a tuple: the graph's three outputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(image)
        return out["depth"][-1], out["confidence"][-1], out["normal"][-1]


def user_cache_dir() -> Path:
    """Where graphs of weights from no writable folder go (XDG_CACHE_HOME, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamer" / "runtimes"


def cache_root(checkpoint: Path | None) -> Path:
    """Beside the weights when that folder is writable, else the user's cache folder."""
    if checkpoint is not None:
        folder = Path(checkpoint).resolve().parent / "streamer-runtimes"
        try:
            folder.mkdir(exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            pass
    folder = user_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def file_sha256(path: Path, root: Path) -> str:
    """The checkpoint's sha256, remembered per (path, size, mtime) so a 5 GB file is read once."""
    stat = path.stat()
    memo_path = root / "hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in memo:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        memo[key] = digest.hexdigest()
        tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo, indent=1))
        tmp.replace(memo_path)
    return memo[key]


def weights_sha256(model: torch.nn.Module) -> str:
    """Weights that came from no file (bench's rule weights): the hash of the state dict itself."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def graph_key(weights_hash: str, backbone: str, input_size: tuple[int, int]) -> str:
    """The folder name of one exported graph: everything that changes the graph is in it."""
    h, w = input_size
    torch_version = torch.__version__.split("+")[0]
    return f"{backbone}-{weights_hash[:16]}-{h}x{w}-{GRAPH_PRECISION}-torch{torch_version}-opset{OPSET}"


def graph_dir(model: torch.nn.Module, backbone: str, input_size: tuple[int, int], checkpoint: Path | None) -> Path:
    root = cache_root(checkpoint)
    weights_hash = file_sha256(Path(checkpoint), root) if checkpoint is not None else weights_sha256(model)
    return root / graph_key(weights_hash, backbone, input_size)


def exported_onnx(
    model: torch.nn.Module, backbone: str, input_size: tuple[int, int], checkpoint: Path | None = None
) -> Path:
    """The cached graph for these weights and input size, exported now if it is not there yet."""
    folder = graph_dir(model, backbone, input_size, checkpoint)
    path = folder / "model.onnx"
    if path.exists():
        log.info("using the exported graph %s", path)
        return path
    unsupported = export_unsupported()
    if unsupported:
        raise ModelError(unsupported, hint="upgrade torch (pip install -U torch), or use --runtime torch")
    log.info("exporting %s at %dx%d to ONNX (once) into %s", backbone, *input_size, folder)
    export_onnx(model, input_size, folder)
    return path


def export_onnx(model: torch.nn.Module, input_size: tuple[int, int], folder: Path) -> None:
    """Export `model` (fp32) into `folder`/model.onnx, atomically."""
    model = model.float().cpu().eval()
    size = sum(p.numel() * 4 for p in model.parameters())
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    try:
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                LastIteration(model).eval(),
                (torch.zeros(2, 3, *input_size),),  # an example batch of 1 would fix the batch at 1
                str(tmp / "model.onnx"),
                dynamo=True,
                opset_version=OPSET,
                input_names=["image"],
                output_names=list(OUTPUTS),
                dynamic_shapes={"image": {0: batch}},
                external_data=size > EXTERNAL_DATA_BYTES,
                verbose=False,
            )
        try:
            tmp.rename(folder)
        except OSError:  # another process exported the same graph meanwhile: theirs is as good
            if not (folder / "model.onnx").exists():
                raise
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"exporting the network to ONNX failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
            hint="use --runtime torch",
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def runtime_cache_dir(onnx_path: Path, runtime: str, version: str, precision: str) -> Path:
    """Where a runtime keeps what it compiled from a graph: beside the graph, per version and precision."""
    folder = onnx_path.parent / f"{runtime}-{version}-{precision}"
    folder.mkdir(exist_ok=True)
    return folder
