"""OpenCV's INTER_LINEAR resize of uint8 images, bit-exact, as batched integer tensor ops.

The official Metric3D recipe resizes with cv2 on the host; doing it on the model's device keeps
the frame as uint8 until it is there. OpenCV's fixed-point scheme: 11-bit horizontal and vertical
weights, horizontal pass into int32, vertical pass with its SIMD rounding
((b0*(S0>>4))>>16 + (b1*(S1>>4))>>16 + 2)>>2. Columns clamp their weights at the border, rows
do not (they clamp only the row index). Checked against cv2.resize in the tests.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

COEF_SCALE = 2048


@lru_cache(maxsize=64)
def _axis(src: int, dst: int, clamp_weights: bool) -> tuple[np.ndarray, ...]:
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s).astype(np.float32)
    if clamp_weights:
        low, high = s < 0, s >= src - 1
        f[low | high] = 0
        s[low] = 0
        s[high] = src - 1
    w1 = np.rint(f * COEF_SCALE).astype(np.int32)
    w0 = np.rint((np.float32(1) - f) * COEF_SCALE).astype(np.int32)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


class LinearResizeU8:
    """Resize (N, H, W, C) uint8 -> (N, h, w, C) uint8, identical to cv2.resize(..., INTER_LINEAR).

    Only the source rows the vertical pass reads are widened to int32 (shrinking 1080p to a model
    input of 56 rows reads 112 of 1080), and columns are picked while still uint8."""

    def __init__(self, src_hw: tuple[int, int], dst_hw: tuple[int, int], device: torch.device) -> None:
        def tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
            return [torch.from_numpy(a).to(device) for a in arrays]

        self.cols = tensors(*_axis(src_hw[1], dst_hw[1], True))
        r0, r1, b0, b1 = _axis(src_hw[0], dst_hw[0], False)
        used, inverse = np.unique(np.concatenate((r0, r1)), return_inverse=True)
        self.used_rows = tensors(used)[0]
        self.rows = tensors(inverse[: len(r0)], inverse[len(r0) :], b0, b1)  # indices into the rows read

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        c0, c1, a0, a1 = self.cols
        r0, r1, b0, b1 = self.rows
        x = images.index_select(1, self.used_rows)  # (N, rows read, W, C) uint8
        horiz = x[:, :, c0].to(torch.int32) * a0[:, None] + x[:, :, c1].to(torch.int32) * a1[:, None]
        s0, s1 = horiz[:, r0] >> 4, horiz[:, r1] >> 4
        b0, b1 = b0[:, None, None], b1[:, None, None]
        out = (((b0 * s0) >> 16) + ((b1 * s1) >> 16) + 2) >> 2
        return out.clamp_(0, 255).to(torch.uint8)
