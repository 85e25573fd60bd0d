"""Checkpoint files: find (local path or Hugging Face cache), read safely, map keys, load strictly.

The official files are `torch.save`d dicts with the weights under `model_state_dict` and keys
prefixed `depth_model.`. The network classes know nothing of this layout.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
from torch import nn

from streamer.errors import ModelError
from streamer.models.metric3d.variants import HF_REPO_ID, VARIANTS, get_variant

CHECKPOINT_PREFIX = "depth_model."
# ResidualBlock.norm3 is ResidualBlock.downsample[1]: both keys exist, the second one is used.
ALIAS_SUFFIXES = ((".norm3.weight", ".downsample.1.weight"), (".norm3.bias", ".downsample.1.bias"))


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_checkpoint(backbone: str) -> Path | None:
    """Path of the official file in the Hugging Face cache, or None if it was never downloaded."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(HF_REPO_ID, get_variant(backbone).checkpoint_file)
    return Path(found) if isinstance(found, str) else None


def resolve_checkpoint(backbone: str, checkpoint: str | Path | None, local_files_only: bool = False) -> Path:
    """A local file as given, or the official file by backbone name from the hub's cache (downloading it).

    hf_hub_download writes to `<file>.incomplete` and checks the hub's size and sha256 before
    moving the file in place, so a partial download is never picked up.
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise ModelError(f"checkpoint {path} does not exist", hint="check the --checkpoint path")
        if path.is_dir():
            raise ModelError(f"checkpoint {path} is a directory", hint="pass the .pth file itself")
        return path
    filename = get_variant(backbone).checkpoint_file
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(HF_REPO_ID, filename, local_files_only=local_files_only))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ModelError(
            f"weights {filename} are not cached and could not be downloaded ({type(exc).__name__})",
            hint=(
                f"download https://huggingface.co/{HF_REPO_ID}/blob/main/{filename} and pass "
                f"--checkpoint PATH, or put it in the Hugging Face cache ({hf_cache_dir()}) with "
                f"`hf download {HF_REPO_ID} {filename}`"
            ),
        ) from exc


def load_weights_only(path: Path):
    """torch.load without running pickled code; memory-mapped unless the file predates the zip format."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with `weights_only=True` (no pickled code runs) -> keys without `depth_model.`."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ModelError(f"checkpoint {path} is empty", hint="download it again")
    try:
        obj = load_weights_only(path)
    except Exception as exc:  # torch raises many kinds for bad files: pickle, zip, unsafe globals
        raise ModelError(
            f"{path} is not a readable weights-only checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
            hint="download the official file again; files that need arbitrary pickled code are refused",
        ) from exc
    state = obj.get("model_state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} holds no Metric3D state dict", hint="expected a dict with 'model_state_dict'")
    return to_model_keys(state)


def to_model_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official checkpoint keys (`depth_model.…`, maybe `module.…`) -> this model's keys."""
    return {key.removeprefix("module.").removeprefix(CHECKPOINT_PREFIX): value for key, value in state.items()}


def detect_backbone(state: dict[str, torch.Tensor]) -> str | None:
    """Which variant a state dict belongs to, from its embedding width and depth."""
    pos = state.get("encoder.pos_embed")
    if pos is None:
        return None
    depth = len({k.split(".")[3] for k in state if k.startswith("encoder.blocks.0.")})
    for name, variant in VARIANTS.items():
        if pos.shape[-1] == variant.embed_dim and depth == variant.depth:
            return name
    return None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load: every missing, unexpected or mis-shaped key is an error that names it."""
    state = dict(state)
    for norm3, downsample in ALIAS_SUFFIXES:
        for key in [k for k in state if k.endswith(downsample)]:
            state[key[: -len(downsample)] + norm3] = state[key]
    expected = model.state_dict()
    backbone = getattr(getattr(model, "variant", None), "name", "?")
    found = detect_backbone(state)
    if found is not None and found != backbone:
        raise ModelError(
            f"{source} is for {found}, but the model is {backbone}",
            hint=f"pass --backbone {found}, or a {backbone} checkpoint",
        )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {CHECKPOINT_PREFIX}{missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {CHECKPOINT_PREFIX}{unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} with wrong shape (e.g. {CHECKPOINT_PREFIX}{k}: "
            f"{tuple(state[k].shape)} != {tuple(expected[k].shape)})"
        )
    if problems:
        raise ModelError(
            f"{source} does not match Metric3D {backbone}: " + "; ".join(problems),
            hint="use an official metric_depth_vit_*_800k.pth file for this backbone",
        )
    on_meta = any(p.is_meta for p in model.parameters())
    model.load_state_dict(state, strict=True, assign=on_meta)


def official_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict under the official key names (as in `model_state_dict` of the released files)."""
    return {CHECKPOINT_PREFIX + k: v for k, v in model.state_dict().items()}


def rule_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Deterministic non-trained weights: the rule the shared golden vectors were made with.

    Per official key, a CPU generator seeded with crc32(key); 1-D `.weight` -> 1 + 0.02*randn,
    everything else 0.02*randn. Used by tests and benchmarks where no real checkpoint exists.
    """
    out = {}
    for key, value in official_state_dict(model).items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        noise = 0.02 * torch.randn(tuple(value.shape), generator=g, dtype=torch.float32)
        out[key] = 1 + noise if value.dim() == 1 and key.endswith(".weight") else noise
    return out


def save_official_checkpoint(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write a file in the released layout: {'model_state_dict': {'depth_model.…': tensor}}."""
    path = Path(path)
    torch.save({"model_state_dict": state}, path)
    return path
