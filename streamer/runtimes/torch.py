"""The torch runtime: the module itself, eager or compiled (`--compile`), in the chosen dtype."""

from __future__ import annotations

import torch

from streamer.engine.compiled import CompiledOrEager
from streamer.engine.device import resolve_dtype


class TorchRuntime:
    """Wraps a placed module; every GRU iteration is available (the ComfyUI mode needs them)."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.module = module
        self.device = device
        self.input_dtype = dtype
        self.precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]

    @classmethod
    def load(cls, model: torch.nn.Module, device: torch.device, precision: str, compile: bool) -> TorchRuntime:
        """Loaded weights -> the device and precision to run in (auto: fp16 on CUDA, fp32 on CPU)."""
        dtype = resolve_dtype(precision, device)
        model = model.to(device=device, dtype=dtype).eval()
        return cls(CompiledOrEager(model, device) if compile else model, device, dtype)

    @classmethod
    def around(cls, module: torch.nn.Module) -> TorchRuntime:
        """An already placed module, where its parameters are."""
        param = next(module.parameters())
        return cls(module, param.device, param.dtype)

    def __call__(self, x: torch.Tensor, all_iterations: bool = False) -> dict[str, list[torch.Tensor]]:
        return self.module(x, all_iterations=all_iterations)
