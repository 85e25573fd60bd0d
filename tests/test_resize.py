"""The device-side letterbox resize is bit-identical to cv2.resize(INTER_LINEAR)."""

import cv2

import numpy as np
import pytest
import torch

from streamer.processors.resize import LinearResizeU8


@pytest.mark.parametrize(
    "src,dst",
    [
        ((240, 320), (616, 821)),
        ((1080, 1920), (598, 1064)),
        ((100, 77), (616, 474)),
        ((37, 53), (30, 40)),
        ((480, 640), (616, 821)),
        ((720, 1280), (308, 547)),
        ((1080, 1920), (56, 100)),  # a steep shrink reads only some rows
    ],
)
def test_matches_opencv_exactly(src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    images = rng.integers(0, 256, (2, *src, 3), dtype=np.uint8)
    ours = LinearResizeU8(src, dst, torch.device("cpu"))(torch.from_numpy(images)).numpy()
    for i in range(2):
        ref = cv2.resize(images[i], (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(ours[i], ref)
