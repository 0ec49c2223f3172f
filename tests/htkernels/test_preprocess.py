"""preprocess Triton kernel: bit-exact with the reference op and with the engine's numpy (Pillow-exact) path."""

import numpy as np
import pytest
import torch

from engine.preprocess import pil_resize_matrix, resize_like_pil, to_gray
from htkernels.preprocess import preprocess_ref, preprocess_triton

from ..tolerances import RELATIVE, assert_relative


def weights(in_size, out_size, device):
    return torch.from_numpy(np.array(pil_resize_matrix(in_size, out_size))).to(device=device, dtype=torch.int32)


@pytest.mark.parametrize("shape,size", [
    ((2, 37, 53), 24),  # downscale, non-square
    ((1, 20, 29, 3), 24),  # RGB
    ((1, 24, 31), 24),  # vertical pass skipped
    ((3, 41, 24), 24),  # horizontal pass skipped
    ((1, 9, 11), 24),  # upscale
    ((1, 24, 24), 24),  # no resize at all
])
def test_preprocess_matches_pillow_path(device, poisoned, shape, size):
    gen = torch.Generator().manual_seed(sum(shape))
    frames = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    row_w, col_w = weights(shape[1], size, device), weights(shape[2], size, device)
    actual = preprocess_triton(frames.to(device), row_w, col_w, 1.0 / 255.0, torch.float32).cpu()
    assert actual.shape == (shape[0], 3, size, size)
    expected = preprocess_ref(frames, row_w.cpu(), col_w.cpu(), 1.0 / 255.0, torch.float32)
    assert_relative(actual, expected, RELATIVE[torch.float32], f"preprocess {shape}")
    for index in range(shape[0]):
        gray = resize_like_pil(to_gray(frames[index].numpy()), size, size)
        pillow_path = torch.from_numpy(gray.astype(np.float32) * np.float32(1.0 / 255.0))
        for channel in range(3):
            assert torch.equal(actual[index, channel], pillow_path), f"frame {index} channel {channel} differs"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_preprocess_low_precision_output(device, poisoned, dtype):
    gen = torch.Generator().manual_seed(5)
    frames = torch.randint(0, 256, (2, 30, 45), dtype=torch.uint8, generator=gen)
    row_w, col_w = weights(30, 16, device), weights(45, 16, device)
    actual = preprocess_triton(frames.to(device), row_w, col_w, 1.0 / 255.0, dtype).cpu()
    expected = preprocess_ref(frames, row_w.cpu(), col_w.cpu(), 1.0 / 255.0, dtype)
    assert actual.dtype == dtype
    assert torch.equal(actual, expected)


def test_preprocess_strided_frames(device, poisoned):
    gen = torch.Generator().manual_seed(6)
    wide = torch.randint(0, 256, (2, 33, 70, 3), dtype=torch.uint8, generator=gen)
    frames = wide[:, 1:, 5:60]  # RGB crop: non-contiguous rows
    row_w, col_w = weights(32, 16, device), weights(55, 16, device)
    actual = preprocess_triton(frames.to(device), row_w, col_w, 0.5, torch.float32).cpu()
    expected = preprocess_ref(frames, row_w.cpu(), col_w.cpu(), 0.5, torch.float32)
    assert torch.equal(actual, expected)


def test_preprocess_rejects_bad_input(device):
    from htkernels.errors import KernelInputError

    row_w, col_w = weights(10, 8, device), weights(12, 8, device)
    with pytest.raises(KernelInputError, match="uint8"):
        preprocess_triton(torch.zeros(1, 10, 12, device=device), row_w, col_w, 1.0, torch.float32)
    with pytest.raises(KernelInputError, match="col_weights"):
        preprocess_triton(torch.zeros(1, 10, 13, dtype=torch.uint8, device=device), row_w, col_w, 1.0,
                          torch.float32)
