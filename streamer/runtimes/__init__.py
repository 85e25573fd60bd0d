"""How the network runs: one interface (normalised images in, the last iteration's maps out).

A runtime runs Metric3D's network and nothing else; letterbox, normalisation and the metric maps
stay in the stage (processors/metric3d.py), the same for every runtime. `torch` runs the module
eagerly (or compiled); `openvino`, `onnxruntime` and `tensorrt` run the ONNX graph exported once
from the checkpoint into a cache (runtimes/export.py).

`auto` picks by a fixed rule, from measurements on 2-core CPUs (vit-small, 224x392, ms a frame on
a quiet Xeon: torch fp32 463, ONNX Runtime fp32 385, OpenVINO fp32 300, OpenVINO bf16 72; the
same order in benchmarks/README.md's tables):
  - CUDA: tensorrt (ONNX Runtime's TensorRT provider, fp16 engines) when installed, else torch;
  - CPU: openvino when installed, else onnxruntime, else torch;
  - anything else (mps), and the ComfyUI mode (it needs every GRU iteration): torch.
A runtime that is missing or fails to load falls back to torch with one warning, never a crash.
`tensorrt` is ONNX Runtime's TensorRT provider (runtimes/onnxruntime.py says why).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from streamer.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime", "tensorrt")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_ORDER = ("openvino", "onnxruntime")  # auto on the CPU: the first of these installed, else torch
CUDA_ORDER = ("tensorrt",)  # auto on CUDA
INSTALL = {
    "openvino": "pip install 'streamer[openvino]'",
    "onnxruntime": "pip install 'streamer[onnx]'",
    "tensorrt": "pip install 'streamer[tensorrt]'",
}


class Runtime(Protocol):
    """What the stage needs from a runtime: where its inputs live, in which dtype, and a forward."""

    name: str
    precision: str  # the precision it computes in: fp32, fp16 or bf16
    device: torch.device  # where the stage keeps its tensors (inputs and outputs)
    input_dtype: torch.dtype  # the dtype of the normalised images it takes

    def __call__(self, x: torch.Tensor, all_iterations: bool = False) -> dict[str, list[torch.Tensor]]: ...


@dataclass(frozen=True)
class Request:
    """What to run: the runtime asked for and the settings that decide how it is built."""

    runtime: str
    device: torch.device
    precision: str  # auto, fp32, fp16, bf16
    input_size: tuple[int, int]
    backbone: str
    checkpoint: Path | None = None  # the weights file (keys the cache); None: hash the loaded weights
    threads: int = 0  # CPU threads for the network; 0: the runtime's default
    compile: bool = False
    all_iterations: bool = False  # the ComfyUI mode: every GRU iteration, only the torch module has them
    lanes: int = 1  # forward passes side by side the run will make (engine/threads.py file_lanes)


def installed(name: str) -> bool:
    """Whether a runtime's package is importable (without importing it)."""
    module = {"openvino": "openvino", "onnxruntime": "onnxruntime", "tensorrt": "onnxruntime"}.get(name)
    if module is None:
        return name == "torch"
    if importlib.util.find_spec(module) is None:
        return False
    if name == "tensorrt":
        from streamer.runtimes.onnxruntime import providers_available

        return "TensorrtExecutionProvider" in providers_available()
    return True


def pick(request: Request) -> tuple[str, str]:
    """The runtime `auto` stands for on this machine, and why (the stated rule above)."""
    if request.all_iterations:
        return "torch", "the ComfyUI mode needs every GRU iteration"
    if request.device.type == "cuda":
        for name in CUDA_ORDER:
            if installed(name):
                return name, "the fastest runtime installed for CUDA"
        return "torch", "CUDA without TensorRT"
    if request.device.type == "cpu":
        for name in CPU_ORDER:
            if installed(name):
                return name, "the fastest runtime installed for the CPU"
        return "torch", "no OpenVINO or ONNX Runtime installed"
    return "torch", f"{request.device.type} runs best in torch"


def open_runtime(request: Request, model: torch.nn.Module) -> tuple[Runtime, str]:
    """The runtime to run `model` with, and one line saying what runs (for the CLI to print).

    `model` holds the loaded fp32 weights on the CPU. A runtime asked for by name that is not
    installed, or cannot run as asked (precision, device), is one clear error; any other failure to
    load, and any failure of `auto`'s pick, falls back to torch with one warning.
    """
    if request.runtime not in RUNTIMES:
        raise ConfigError(f"runtime {request.runtime!r} is unknown", hint=f"use one of {', '.join(RUNTIMES)}")
    name, why = pick(request) if request.runtime == "auto" else (request.runtime, "asked for")
    if name != "torch" and request.all_iterations:
        raise ConfigError(
            f"the ComfyUI mode needs every GRU iteration, which only the torch runtime gives ({name} was asked for)",
            hint="use --runtime torch or auto with comfy outputs",
        )
    if name != "torch" and not installed(name):
        raise ConfigError(f"runtime {name} is not installed", hint=INSTALL[name])
    runtime = build(name, request, model) if name == "torch" else None
    if runtime is None:
        try:
            runtime = build(name, request, model)
        except Exception as exc:  # a provider that will not load, an op it lacks, an export that fails
            if request.runtime != "auto" and isinstance(exc, (ConfigError, ModelError)):
                raise  # asked for by name: say what is wrong with it
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            log.warning("runtime %s failed to load (%s); running the model in torch", name, first)
            runtime, why = build("torch", request, model), f"{name} failed to load"
    return runtime, f"runtime {runtime.name} ({runtime.precision}) on {runtime.device}: {why}"


def build(name: str, request: Request, model: torch.nn.Module) -> Runtime:
    """One runtime by name; the ONNX ones export (or reuse) the cached graph first."""
    if name == "torch":
        from streamer.runtimes.torch import TorchRuntime

        return TorchRuntime.load(model, request.device, request.precision, request.compile)
    from streamer.runtimes.export import exported_onnx

    if name != "openvino":  # what the runtime cannot do is said before a minute of export
        from streamer.runtimes.onnxruntime import check_precision

        check_precision(request.precision, name == "tensorrt")
    onnx_path = exported_onnx(model, request.backbone, request.input_size, request.checkpoint)
    if name == "openvino":
        from streamer.runtimes.openvino import OpenVINORuntime

        return OpenVINORuntime(onnx_path, request.device, request.precision, request.threads, request.lanes)
    from streamer.runtimes.onnxruntime import OnnxRuntime

    tensorrt = name == "tensorrt"
    return OnnxRuntime(
        onnx_path, request.device, request.precision, request.threads, tensorrt=tensorrt, lanes=request.lanes
    )


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in PRECISIONS.items()}[dtype]
