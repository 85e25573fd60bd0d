"""How a run uses the machine, decided from its config and, once loaded, its stage: the CPU
threads (timed at start-up, engine/threads.py), the frames per forward pass and the forward passes
side by side (lanes). `prepare` decides them before a run; `bench` makes the same decisions.
"""

from __future__ import annotations

import os

import torch

from streamer.config import Config
from streamer.engine.device import resolve_device
from streamer.engine.shared import SharedStage
from streamer.engine.threads import (
    ThreadBudget,
    file_batch,
    file_lanes,
    lanes_budget,
    own_pool_budget,
    timed_budget,
)
from streamer.processors.metric3d import Metric3DStage, short_side_size


def measures_budget(cfg: Config) -> bool:
    """Whether the thread budget is timed at start-up: Metric3D on the CPU with no `--threads`."""
    return (
        cfg.engine.threads is None
        and cfg.model.processor == "metric3d"
        and resolve_device(cfg.model.device).type == "cpu"
    )


def fit_threads(stage: Metric3DStage, cfg: Config, source_wh: tuple[int, int]) -> ThreadBudget:
    """On the model thread, after loading with every core: the budget timed (engine/threads.py)."""
    proc = stage.processor
    if proc.runtime.name != "torch":
        budget = own_pool_budget(proc.runtime.name)
        torch.set_num_threads(budget.torch)
        return budget
    x = torch.zeros((1, 3, *proc.input_size), dtype=proc.dtype, device=proc.device)
    out_hw = short_side_size(source_wh[::-1], cfg.model.resolution) if cfg.model.resolution else None
    return timed_budget(lambda: proc.runtime(x), source_wh, out_hw[::-1] if out_hw else None)


def run_lanes(cfg: Config, stage, live: bool) -> tuple[int, str]:
    """Forward passes side by side for a loaded stage, and why (`planned_lanes`); stages shared by
    several pipelines run one pass at a time."""
    if isinstance(stage, SharedStage) or not isinstance(stage, Metric3DStage):
        return 1, "one forward pass at a time"
    return planned_lanes(cfg, live, stage.processor.input_size, stage.device.type)


def planned_lanes(
    cfg: Config, live: bool, input_size: tuple[int, int] | str | None = None, device_type: str | None = None
) -> tuple[int, str]:
    """Forward passes side by side, and why: for Metric3D files on the CPU (engine/threads.py, auto),
    given or auto; live sources run one pass at a time. Before loading, from the config (an input
    size of auto is known only after: one pass until then)."""
    input_size = input_size or cfg.model.input_size
    device_type = device_type or resolve_device(cfg.model.device).type
    if live or cfg.model.processor != "metric3d" or device_type != "cpu" or input_size == "auto":
        return 1, "one forward pass at a time"
    if cfg.model.compile:
        return 1, "one forward pass at a time (a torch.compile'd model runs on the model thread only)"
    if cfg.engine.lanes != "auto":
        given = cfg.engine.lanes
        return given, (
            f"{given} forward passes side by side" if given > 1 else "one forward pass at a time"
        ) + " (given)"
    return file_lanes(input_size, cfg.engine.threads)


def use_lanes(stage: Metric3DStage, lanes: int, total: int | None = None) -> ThreadBudget:
    """On the model thread: the stage's runtime set up for `lanes` passes side by side on `total`
    cores (default: all), torch's pool sized to match; the split. make_pipeline reads `stage.lanes`.
    One lane puts the runtime back as it loaded (the caller sizes torch's pool again)."""
    runtime = stage.processor.runtime
    budget = lanes_budget(runtime.name, lanes, total)
    if hasattr(runtime, "use_lanes"):
        runtime.use_lanes(lanes, max(1, (total or os.cpu_count() or 1) // lanes))
    stage.lanes, stage.lane_threads = lanes, budget.torch
    if lanes > 1:
        torch.set_num_threads(budget.torch)
    return budget


def batch_size(cfg: Config, stage, live: bool) -> tuple[int, str | None]:
    """Frames per forward pass, and why when `auto` chose: for files on the CPU by the input's
    size (engine/threads.py), else one. Live sources take frames one at a time whatever is set."""
    if cfg.engine.batch_size != "auto":
        return cfg.engine.batch_size, None
    inner = stage.stage if isinstance(stage, SharedStage) else stage
    if isinstance(inner, Metric3DStage) and inner.device.type == "cpu" and not live:
        return file_batch(inner.processor.input_size)
    return 1, None
