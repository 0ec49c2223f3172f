"""The CUDA ops' Python-side checks, fake implementations and provider: these run anywhere, GPU or not."""

import pytest
import torch

from engine.bench.inputs import pil_weights
from engine.optimize.cuda_provider import CudaAdapterKernels
from htkernels import cuda_ops
from htkernels.errors import KernelInputError
from htkernels.testing import PARAM_NAMES, random_frames, spatial_inputs


def test_ops_reject_cpu_tensors_with_a_typed_error():
    z, spectral, params = spatial_inputs(1, 3, 4, 8, spectral=False)
    with pytest.raises(KernelInputError, match="z: the CUDA kernels need CUDA tensors"):
        cuda_ops.adapter_spatial(z, 3, 4, spectral, *(params[name] for name in PARAM_NAMES))
    frames = random_frames(1, 10, 12, rgb=False)
    with pytest.raises(KernelInputError, match="frames: the CUDA kernels need CUDA tensors"):
        cuda_ops.preprocess(frames, pil_weights(10, 8), pil_weights(12, 8), 1 / 255)


def test_fake_adapter_spatial_gives_shape_and_dtype():
    meta = {name: torch.empty(1, device="meta") for name in PARAM_NAMES}
    z = torch.empty(3, 1 + 7 * 5, 16, dtype=torch.bfloat16, device="meta")
    g = torch.ops.htkernels.cuda_adapter_spatial(z, 7, 5, None, *(meta[name] for name in PARAM_NAMES))
    assert (g.shape, g.dtype, g.device.type) == (z.shape, z.dtype, "meta")
    with pytest.raises(KernelInputError, match="z has 36 tokens, expected 1 \\+ 5\\*5 = 26"):
        torch.ops.htkernels.cuda_adapter_spatial(z, 5, 5, None, *(meta[name] for name in PARAM_NAMES))
    with pytest.raises(KernelInputError, match="grid 33x1 is out of range"):
        torch.ops.htkernels.cuda_adapter_spatial(z[:, :34], 33, 1, None, *(meta[name] for name in PARAM_NAMES))


def test_fake_preprocess_gives_shape_and_dtype():
    frames = torch.empty(2, 30, 41, 3, dtype=torch.uint8, device="meta")
    rows = torch.empty(16, 30, dtype=torch.int32, device="meta")
    cols = torch.empty(24, 41, dtype=torch.int32, device="meta")
    images = torch.ops.htkernels.cuda_preprocess(frames, rows, cols, 1 / 255, torch.float16)
    assert (tuple(images.shape), images.dtype) == ((2, 3, 16, 24), torch.float16)
    with pytest.raises(KernelInputError, match="frames: expected uint8 pixels"):
        torch.ops.htkernels.cuda_preprocess(frames.float(), rows, cols, 1 / 255, torch.float16)


def test_provider_says_why_it_is_unavailable():
    ok, reason = CudaAdapterKernels.available("cpu")
    assert not ok and "CUDA devices only" in reason
    if not torch.cuda.is_available():
        ok, reason = CudaAdapterKernels.available("cuda")
        assert not ok and reason
