"""The CUDA C++ ops against the PyTorch references on a GPU (skipped, with the reason, elsewhere).

Outputs are NaN-poisoned before the kernels write them, so an element left unwritten fails the comparison. The
references run on CPU, so the spectral path is compared with pocketfft's irfft2 convention."""

import pytest
import torch

from engine.bench.inputs import pil_weights
from engine.model import build_reference_model
from engine.optimize.cuda_provider import CudaAdapterKernels
from engine.optimize.kernels import kernel_provider
from engine.optimize.model import OptimizedHTModel
from htkernels import cuda_ops
from htkernels.adapter_in import adapter_in_ref
from htkernels.adapter_out import adapter_out_ref
from htkernels.errors import KernelInputError
from htkernels.preprocess import preprocess_ref
from htkernels.testing import PARAM_NAMES, random_frames, reference_spatial, spatial_inputs

from ..helpers import random_images, small_config, small_tensors
from ..tolerances import RELATIVE, assert_relative
from .cuda_support import gpu_marks

pytestmark = gpu_marks()

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SPATIAL_CASES = [  # (batch, h, w, channels): odd, non-square, the model's 14x14, the 32x32 limit, 1x1, wide r
    (1, 7, 7, 16),
    (3, 7, 5, 16),
    (2, 14, 14, 64),
    (1, 1, 1, 8),
    (2, 32, 32, 64),
    (2, 4, 9, 12),
    (1, 3, 8, 128),
    (40, 14, 14, 16),  # enough images for full 32-pixel tiles
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spectral", [False, True], ids=["channel", "spectral"])
@pytest.mark.parametrize("case", SPATIAL_CASES, ids=lambda case: "b{}_{}x{}_r{}".format(*case))
def test_adapter_spatial_matches_reference(case, spectral, dtype):
    batch, h, w, channels = case
    z, filt, params = spatial_inputs(batch, h, w, channels, spectral, dtype, "cuda", seed=sum(case) + spectral)
    out = torch.full_like(z, float("nan"))
    cuda_ops.adapter_spatial_into(out, z, h, w, filt, *(params[name] for name in PARAM_NAMES))
    expected = reference_spatial(z, h, w, filt, params)
    assert_relative(out.cpu(), expected, RELATIVE[dtype], f"adapter_spatial {case} spectral={spectral} {dtype}")


@pytest.mark.parametrize("spectral", [False, True], ids=["channel", "spectral"])
def test_adapter_spatial_op_takes_non_contiguous_z_and_low_precision_params(spectral):
    h, w, channels = 6, 11, 32
    z, filt, params = spatial_inputs(3, h, w, channels, spectral, torch.float16, "cuda", seed=11)
    z_strided = z.transpose(0, 1).contiguous().transpose(0, 1)
    assert not z_strided.is_contiguous()
    half_params = {name: value.half() for name, value in params.items()}
    g = cuda_ops.adapter_spatial(z_strided, h, w, filt, *(half_params[name] for name in PARAM_NAMES))
    expected = reference_spatial(z, h, w, filt, half_params)
    assert g.dtype == torch.float16 and g.is_contiguous()
    assert_relative(g.cpu(), expected, RELATIVE[torch.float16], "adapter_spatial op, strided z")


def test_adapter_spatial_replays_in_a_cuda_graph():
    h, w, channels = 14, 14, 64
    z, filt, params = spatial_inputs(2, h, w, channels, True, torch.float32, "cuda", seed=5)
    args = [params[name] for name in PARAM_NAMES]
    static_z = z.clone()
    cuda_ops.adapter_spatial(static_z, h, w, filt, *args)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_g = cuda_ops.adapter_spatial(static_z, h, w, filt, *args)
    fresh, _, _ = spatial_inputs(2, h, w, channels, False, torch.float32, "cuda", seed=6)
    static_z.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    assert_relative(static_g.cpu(), reference_spatial(fresh, h, w, filt, params), RELATIVE[torch.float32],
                    "adapter_spatial in a CUDA graph")


def test_adapter_spatial_rejects_parameters_on_another_device():
    z, filt, params = spatial_inputs(1, 3, 4, 8, False, torch.float32, "cuda")
    params["proj"] = params["proj"].cpu()
    with pytest.raises(KernelInputError, match="proj: the CUDA kernels need CUDA tensors"):
        cuda_ops.adapter_spatial(z, 3, 4, filt, *(params[name] for name in PARAM_NAMES))
    params["proj"] = params["proj"].cuda()[:, :4]
    with pytest.raises(KernelInputError, match=r"proj: expected shape \[8, 8\], got \[8, 4\]"):
        cuda_ops.adapter_spatial(z, 3, 4, filt, *(params[name] for name in PARAM_NAMES))


def test_adapter_spatial_reports_launcher_limits_as_input_errors():
    z, filt, params = spatial_inputs(1, 2, 2, 129, False, torch.float32, "cuda")
    with pytest.raises(KernelInputError, match="channels 129 is out of range"):
        cuda_ops.adapter_spatial(z, 2, 2, filt, *(params[name] for name in PARAM_NAMES))


PREPROCESS_CASES = [  # (batch, height, width, out_h, out_w, rgb)
    (1, 30, 41, 16, 16, False),   # downscale, odd
    (3, 9, 13, 16, 16, True),     # upscale, RGB
    (2, 16, 16, 16, 16, False),   # identity: no resampling at all
    (2, 16, 37, 16, 16, True),    # horizontal pass only
    (1, 50, 17, 24, 20, False),   # non-square output
    (2, 120, 90, 32, 32, True),   # strong downscale: wide antialiasing support
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PREPROCESS_CASES, ids=lambda case: "b{}_{}x{}_to_{}x{}_{}".format(
    *case[:5], "rgb" if case[5] else "gray"))
def test_preprocess_matches_reference_exactly(case, dtype):
    batch, height, width, out_h, out_w, rgb = case
    frames = random_frames(batch, height, width, rgb, seed=sum(case[:5]), device="cuda")
    rows, cols = pil_weights(height, out_h), pil_weights(width, out_w)
    out = torch.full((batch, 3, out_h, out_w), float("nan"), dtype=dtype, device="cuda")
    cuda_ops.preprocess_into(out, frames, rows.cuda(), cols.cuda(), 1 / 255)
    expected = preprocess_ref(frames.cpu(), rows, cols, 1 / 255, dtype)
    assert torch.equal(out.cpu(), expected), f"preprocess {case} {dtype}: max diff " \
        f"{(out.cpu().double() - expected.double()).abs().max().item()}"


def test_preprocess_op_takes_non_contiguous_frames_and_int64_weights():
    frames = random_frames(4, 23, 31, True, seed=3, device="cuda")[::2]
    assert not frames.is_contiguous()
    rows, cols = pil_weights(23, 12).long().cuda(), pil_weights(31, 12).long().cuda()
    images = cuda_ops.preprocess(frames, rows, cols, 0.5, torch.float32)
    assert torch.equal(images.cpu(), preprocess_ref(frames.cpu(), rows.cpu(), cols.cpu(), 0.5, torch.float32))


def test_provider_runs_every_method():
    ok, reason = CudaAdapterKernels.available("cuda")
    assert ok, reason
    kernels = CudaAdapterKernels()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(10, 24, generator=gen).cuda()
    w_norm, w_raw = torch.randn(8, 24, generator=gen).cuda(), torch.randn(8, 24, generator=gen).cuda()
    bias = torch.randn(8, generator=gen).cuda()
    assert_relative(kernels.adapter_in(x, w_norm, w_raw, bias, 1e-5).cpu(),
                    adapter_in_ref(x.cpu(), w_norm.cpu(), w_raw.cpu(), bias.cpu(), 1e-5), RELATIVE[torch.float32],
                    "adapter_in")
    g = torch.randn(10, 8, generator=gen).cuda()
    w2, b2 = torch.randn(24, 8, generator=gen).cuda(), torch.randn(24, generator=gen).cuda()
    assert_relative(kernels.adapter_out(g, w2, b2, x).cpu(), adapter_out_ref(g.cpu(), w2.cpu(), b2.cpu(), x.cpu()),
                    RELATIVE[torch.float32], "adapter_out")
    z, filt, params = spatial_inputs(2, 3, 4, 8, True, torch.float32, "cuda", seed=4)
    assert_relative(kernels.adapter_spatial(z, 3, 4, filt, *(params[name] for name in PARAM_NAMES)).cpu(),
                    reference_spatial(z, 3, 4, filt, params), RELATIVE[torch.float32], "adapter_spatial")
    frames = random_frames(2, 20, 30, False, device="cuda")
    rows, cols = pil_weights(20, 16), pil_weights(30, 16)
    assert torch.equal(kernels.preprocess(frames, rows.cuda(), cols.cuda(), 1 / 255, torch.float32).cpu(),
                       preprocess_ref(frames.cpu(), rows, cols, 1 / 255, torch.float32))


@pytest.mark.parametrize("filter_kind", ["channel", "spectral"])
@pytest.mark.parametrize("arch", ["biomedclip-vit-b16", "openai-clip-vit-b16"])
def test_optimized_model_with_cuda_kernels_equals_reference(arch, filter_kind):
    cfg = small_config(arch, "seg", filter_kind)
    tensors = small_tensors(cfg, seed=7)
    images = random_images(2, cfg.image_size, seed=8)
    with torch.inference_mode():
        expected = build_reference_model(cfg, tensors)(images)
        actual = OptimizedHTModel(cfg, tensors, kernels=kernel_provider("cuda")).cuda().eval()(images.cuda())
    assert_relative(actual.cpu(), expected, RELATIVE[torch.float32], f"optimized model, cuda kernels, {arch}")


@pytest.mark.parametrize("kernels", ["cuda", "triton", "torch"])
def test_predictor_selects_the_kernels_and_replays_graphs(tmp_path, kernels):
    """`Predictor.load(..., backend="optimized", kernels=...)` on CUDA: CUDA graphs per batch size, reference numbers."""
    from engine import Predictor
    from engine.package import save_package

    cfg = small_config("biomedclip-vit-b16", "seg", "spectral")
    path = tmp_path / "seg.htpkg"
    save_package(path, cfg, small_tensors(cfg, seed=9))
    reference = Predictor.load(path, backend="reference")
    predictor = Predictor.load(path, backend="optimized", device="cuda", precision="fp32", kernels=kernels)
    for batch in (1, 3, 1):  # the second batch-1 call replays the first graph
        images = random_images(batch, cfg.image_size, seed=10 + batch)
        assert_relative(predictor.forward(images), reference.forward(images), RELATIVE[torch.float32],
                        f"optimized predictor, kernels={kernels}, batch {batch}")
