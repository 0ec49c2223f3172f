"""adapter_spatial Triton kernels (filter, noise weights, dynamic 7×7 depthwise conv, (I+P), GELU) vs reference."""

import pytest
import torch

from htkernels.adapter_spatial import adapter_spatial_ref, adapter_spatial_triton

from ..tolerances import RELATIVE, assert_relative


def spatial_args(batch, h, w, channels, spectral, seed):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    reduced = channels // 4
    z = randn(batch, 1 + h * w, channels)
    filt = randn(channels, h, w // 2 + 1, 2, scale=0.5) if spectral else None
    weights = dict(k3=randn(channels, 3, 3, scale=0.3), k5=randn(channels, 5, 5, scale=0.2),
                   k7=randn(channels, 7, 7, scale=0.1), conv_bias=randn(3, channels, scale=0.1),
                   noise_w1=randn(reduced, channels), noise_b1=randn(reduced), noise_w2=randn(3, reduced),
                   noise_b2=randn(3), proj=torch.eye(channels) + randn(channels, channels, scale=0.2),
                   proj_bias=randn(channels, scale=0.1))
    return z, filt, weights


def run_both(device, dtype, batch, h, w, channels, spectral, seed=0):
    z, filt, weights = spatial_args(batch, h, w, channels, spectral, seed)
    z = z.to(device=device, dtype=dtype)
    filt = None if filt is None else filt.to(device)
    weights = {k: v.to(device=device, dtype=dtype) for k, v in weights.items()}
    actual = adapter_spatial_triton(z, h, w, filt, **weights)
    expected = adapter_spatial_ref(z.cpu().double(), h, w, None if filt is None else filt.cpu().double(),
                                   **{k: v.cpu().double() for k, v in weights.items()})
    return actual, expected


@pytest.mark.parametrize("batch,h,w,channels,spectral", [
    (1, 5, 7, 16, False), (2, 7, 7, 16, False), (3, 3, 11, 16, False), (1, 6, 4, 24, False),
    (1, 7, 7, 16, True), (2, 4, 6, 24, True), (1, 5, 3, 16, True),
])
def test_adapter_spatial_fp32(device, poisoned, batch, h, w, channels, spectral):
    actual, expected = run_both(device, torch.float32, batch, h, w, channels, spectral, seed=batch + h * w)
    assert_relative(actual.cpu(), expected, RELATIVE[torch.float32], f"spatial {batch}x{h}x{w}x{channels} {spectral}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spectral", [False, True])
def test_adapter_spatial_low_precision(device, poisoned, dtype, spectral):
    actual, expected = run_both(device, dtype, 2, 5, 6, 16, spectral, seed=3)
    assert actual.dtype == dtype
    assert_relative(actual.cpu(), expected, RELATIVE[dtype], f"spatial {dtype} spectral={spectral}")


@pytest.mark.parametrize("spectral", [False, True])
def test_adapter_spatial_wide_tiles(device, poisoned, monkeypatch, spectral):
    """The 32-pixel tiles that large batches get (small batches use 16-pixel tiles)."""
    import htkernels.adapter_spatial

    monkeypatch.setattr(htkernels.adapter_spatial, "SMALL_LAUNCH_PROGRAMS", 0)
    actual, expected = run_both(device, torch.float32, 2, 7, 5, 16, spectral, seed=21)
    assert_relative(actual.cpu(), expected, RELATIVE[torch.float32], f"spatial wide tiles spectral={spectral}")


def test_adapter_spatial_largest_grid(device, poisoned):
    actual, expected = run_both(device, torch.float32, 1, 32, 32, 16, False, seed=32)
    assert_relative(actual.cpu(), expected, RELATIVE[torch.float32], "spatial 32x32")


def test_adapter_spatial_strided_tokens(device, poisoned):
    z, _, weights = spatial_args(2, 5, 5, 16, False, seed=11)
    wide = torch.randn(2, 26, 40).to(device)
    wide[..., 3:19] = z.to(device)
    view = wide[..., 3:19]  # channel stride 1, token stride 40: a slice of a wider activation
    weights = {k: v.to(device) for k, v in weights.items()}
    actual = adapter_spatial_triton(view, 5, 5, None, **weights)
    expected = adapter_spatial_ref(z.double(), 5, 5, None, **{k: v.cpu().double() for k, v in weights.items()})
    assert_relative(actual.cpu(), expected, RELATIVE[torch.float32], "spatial strided")


def test_adapter_spatial_rejects_bad_grid(device):
    from htkernels.errors import KernelInputError

    z, _, weights = spatial_args(1, 5, 5, 16, False, seed=0)
    weights = {k: v.to(device) for k, v in weights.items()}
    with pytest.raises(KernelInputError, match="tokens"):
        adapter_spatial_triton(z.to(device), 5, 4, None, **weights)
    with pytest.raises(KernelInputError, match="grid"):
        adapter_spatial_triton(torch.randn(1, 1 + 33 * 2, 16, device=device), 33, 2, None, **weights)


@pytest.mark.parametrize("tuning", [dict(block_p=8, num_warps=2), dict(block_p=32, num_warps=8),
                                    dict(pool_block=16), dict(block_p=8, pool_block=64)])
@pytest.mark.parametrize("spectral", [False, True])
def test_adapter_spatial_tuning_keeps_the_result(device, poisoned, tuning, spectral):
    z, filt, weights = spatial_args(2, 5, 7, 16, spectral, seed=13)
    weights = {k: v.to(device) for k, v in weights.items()}
    actual = adapter_spatial_triton(z.to(device), 5, 7, None if filt is None else filt.to(device), **weights,
                                    tuning=tuning)
    expected = adapter_spatial_ref(z.double(), 5, 7, None if filt is None else filt.double(),
                                   **{k: v.cpu().double() for k, v in weights.items()})
    assert_relative(actual.cpu(), expected, RELATIVE[torch.float32], f"spatial {tuning} spectral={spectral}")


def test_adapter_spatial_rejects_a_bad_pool_block(device):
    from htkernels.errors import KernelInputError

    z, _, weights = spatial_args(1, 5, 5, 16, False, seed=0)
    weights = {k: v.to(device) for k, v in weights.items()}
    with pytest.raises(KernelInputError, match="pool_block=24 must be a power of two"):
        adapter_spatial_triton(z.to(device), 5, 5, None, **weights, tuning=dict(pool_block=24))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adapter_spatial_unrolled_mean_low_precision(device, poisoned, dtype):
    z, _, weights = spatial_args(2, 5, 6, 16, False, seed=3)
    z = z.to(device=device, dtype=dtype)
    weights = {k: v.to(device=device, dtype=dtype) for k, v in weights.items()}
    actual = adapter_spatial_triton(z, 5, 6, None, **weights, tuning=dict(pool_block=16))
    expected = adapter_spatial_ref(z.cpu().double(), 5, 6, None, **{k: v.cpu().double() for k, v in weights.items()})
    assert actual.dtype == dtype
    assert_relative(actual.cpu(), expected, RELATIVE[dtype], f"spatial pool_block=16 {dtype}")


def test_spectral_impulse_response_is_computed_once_per_filter(device, poisoned):
    """κ = irfft2(φ) depends on the filter alone: the launcher keeps it per filter tensor. A second launch reuses it
    (the same tensor), gives bitwise the result of an uncached launch, and an in-place change of the filter (a weight
    update) computes it anew."""
    from htkernels.adapter_spatial import IMPULSE_RESPONSES, impulse_response

    z, filt, weights = spatial_args(2, 5, 7, 16, True, seed=17)
    z, filt = z.to(device), filt.to(device)
    weights = {k: v.to(device) for k, v in weights.items()}
    first = adapter_spatial_triton(z, 5, 7, filt, **weights)
    kappa = IMPULSE_RESPONSES.get((filt,), 5, 7)
    assert torch.equal(kappa, impulse_response(filt, 5, 7))
    second = adapter_spatial_triton(z, 5, 7, filt, **weights)
    assert IMPULSE_RESPONSES.get((filt,), 5, 7) is kappa, "the cached κ was recomputed"
    with torch.inference_mode():
        uncacheable = filt.clone()  # an inference tensor: no version counter, so κ is computed at each launch
    uncached = adapter_spatial_triton(z, 5, 7, uncacheable, **weights)
    assert IMPULSE_RESPONSES.get((uncacheable,), 5, 7) is not IMPULSE_RESPONSES.get((uncacheable,), 5, 7)
    assert torch.equal(second, first) and torch.equal(uncached, first)

    with torch.no_grad():
        filt.mul_(0.5).add_(0.25)
    updated = IMPULSE_RESPONSES.get((filt,), 5, 7)
    assert updated is not kappa and torch.equal(updated, impulse_response(filt, 5, 7))
    after = adapter_spatial_triton(z, 5, 7, filt, **weights)
    expected = adapter_spatial_ref(z.cpu().double(), 5, 7, filt.cpu().double(),
                                   **{k: v.cpu().double() for k, v in weights.items()})
    assert_relative(after.cpu(), expected, RELATIVE[torch.float32], "spatial after a filter update")
    assert not torch.equal(after, first)
