"""ONNX Runtime, with the execution provider that fits the device; also the TensorRT runtime.

CPU: the CPU provider (385 ms against torch's 463 for vit-small 224x392 on 2 cores), behind
DirectML on Windows and CoreML on macOS when their providers are installed. CUDA: the CUDA
provider. `tensorrt` is ONNX Runtime's TensorRT provider rather than torch-tensorrt: it builds on
the same exported graph and cache as the other runtimes, caches its engines on disk (keyed here
by ORT version and precision), hands the few nodes TensorRT lacks to the CUDA provider instead of
failing, and does not tie the install to one torch build the way torch-tensorrt wheels do.

On CUDA the inputs and outputs stay on the GPU: I/O binding hands ONNX Runtime the torch tensors'
device pointers, so there is no host round trip. ONNX Runtime quietly falls back to the CPU when
a provider cannot load; that is checked and raised, so `auto` falls back to torch with a warning.
"""

from __future__ import annotations

import os
import queue
import sys
from pathlib import Path

import numpy as np
import torch

from streamer.errors import ConfigError
from streamer.runtimes.export import OUTPUTS, runtime_cache_dir

CHANNELS = {"depth": 1, "confidence": 1, "normal": 4}
TRT_MAX_BATCH = 8


def graph_input_size(onnx_path: Path) -> tuple[int, int]:
    """The (H, W) the graph was exported for (its batch dimension is dynamic)."""
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return dims[2].dim_value, dims[3].dim_value


def providers_available() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def cpu_providers() -> list[str]:
    """The CPU provider, behind the platform's accelerated one where it is installed."""
    preferred = ["DmlExecutionProvider"] if sys.platform == "win32" else []
    preferred += ["CoreMLExecutionProvider"] if sys.platform == "darwin" else []
    available = providers_available()
    return [p for p in preferred if p in available] + ["CPUExecutionProvider"]


def check_precision(precision: str, tensorrt: bool) -> str:
    """ORT runs the fp32 graph as is; TensorRT builds fp16 (default) or fp32 engines."""
    allowed = ("fp32", "fp16") if tensorrt else ("fp32",)
    precision = ("fp16" if tensorrt else "fp32") if precision == "auto" else precision
    if precision not in allowed:
        name = "tensorrt" if tensorrt else "onnxruntime"
        raise ConfigError(
            f"runtime {name} does not run in {precision}", hint=f"use --precision {' or '.join(allowed)} (or auto)"
        )
    return precision


class OnnxRuntime:
    input_dtype = torch.float32

    def __init__(
        self,
        onnx_path: Path,
        device: torch.device,
        precision: str = "auto",
        threads: int = 0,
        tensorrt: bool = False,
        lanes: int = 1,
    ) -> None:
        import onnxruntime as ort

        self.name = "tensorrt" if tensorrt else "onnxruntime"
        self.precision = check_precision(precision, tensorrt)
        if tensorrt and device.type != "cuda":
            raise ConfigError("the tensorrt runtime needs a CUDA device", hint="use --device cuda or --runtime auto")
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"runtime onnxruntime does not run on {device}", hint="use --device cpu or cuda")
        self.device = device
        self.graph = onnx_path
        self._providers = self.providers(onnx_path, ort.__version__) if device.type == "cuda" else cpu_providers()
        self.threads, self.lanes = threads, 0  # 0: no session open yet
        self._idle: queue.SimpleQueue = queue.SimpleQueue()  # lanes: a session each, handed out per call
        lanes = lanes if device.type == "cpu" else 1
        self.use_lanes(lanes, max(1, (threads or os.cpu_count() or 1) // lanes))
        wanted = self._providers[0][0] if isinstance(self._providers[0], tuple) else self._providers[0]
        if wanted not in self.session.get_providers():
            raise RuntimeError(f"ONNX Runtime could not load {wanted}")

    def open_session(self, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        return ort.InferenceSession(str(self.graph), options, providers=self._providers)

    def use_lanes(self, lanes: int, threads: int = 0) -> None:
        """Run the next calls `lanes` at a time, each on a session of its own whose pool is one
        lane's `threads` (calls on one session share its one pool, fixed when it opens): vit-small
        224x392 on 2 cores, 230 ms a frame two at a time on one thread each, 258 one at a time on
        both. Each session holds its weights, so the sessions of the last setting are let go (one
        lane opens a session as at load again)."""
        if lanes == self.lanes:
            return
        sessions = [self.open_session(threads if lanes > 1 else self.threads) for _ in range(lanes)]
        self.lanes, self.session, self._idle = lanes, sessions[0], queue.SimpleQueue()
        for session in sessions:
            self._idle.put(session)

    def providers(self, onnx_path: Path, version: str) -> list:
        cuda = ("CUDAExecutionProvider", {"device_id": self.device.index or 0})
        if self.name != "tensorrt":
            return [cuda, "CPUExecutionProvider"]
        cache = runtime_cache_dir(onnx_path, "tensorrt-ort", version, self.precision)
        h, w = graph_input_size(onnx_path)
        shapes = {n: f"image:{n}x3x{h}x{w}" for n in (1, TRT_MAX_BATCH)}
        trt = {
            "device_id": self.device.index or 0,
            # one engine for every batch the engine makes (else TensorRT rebuilds for each new one)
            "trt_profile_min_shapes": shapes[1],
            "trt_profile_opt_shapes": shapes[1],
            "trt_profile_max_shapes": shapes[TRT_MAX_BATCH],
            "trt_fp16_enable": self.precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
        }
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]

    def __call__(self, x: torch.Tensor, all_iterations: bool = False) -> dict[str, list[torch.Tensor]]:
        if self.device.type == "cuda":
            return self.run_on_gpu(x)
        idle = self._idle
        session = idle.get()  # a lane's own session (never more callers than lanes)
        try:
            outputs = session.run(None, {"image": np.ascontiguousarray(x.detach().float().numpy())})
        finally:
            idle.put(session)
        return {name: [torch.from_numpy(out)] for name, out in zip(OUTPUTS, outputs, strict=True)}

    def run_on_gpu(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """I/O binding: ORT reads and writes the torch tensors in place on the GPU."""
        x = x.float().contiguous()
        n, _, h, w = x.shape
        index = self.device.index or 0
        outputs = {
            name: torch.empty((n, c, h, w), dtype=torch.float32, device=x.device) for name, c in CHANNELS.items()
        }
        binding = self.session.io_binding()
        binding.bind_input("image", "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        for name, tensor in outputs.items():
            binding.bind_output(name, "cuda", index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        torch.cuda.current_stream(x.device).synchronize()  # the input is written on torch's stream
        self.session.run_with_iobinding(binding)  # ORT synchronises its own stream before returning
        return {name: [tensor] for name, tensor in outputs.items()}
