"""adapter_in and adapter_out Triton kernels against their references (htkernels/README.md contracts)."""

import pytest
import torch

from htkernels.adapter_in import adapter_in_pooled_triton, adapter_in_ref, adapter_in_triton
from htkernels.adapter_out import adapter_out_ref, adapter_out_triton

from ..tolerances import RELATIVE, assert_relative

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _randn(generator, *shape, scale=1.0, shift=0.0):
    return torch.randn(*shape, generator=generator) * scale + shift


@pytest.mark.parametrize("one_dot", [False, True], ids=["two_dots", "one_dot"])
@pytest.mark.parametrize("single_pass", [False, True], ids=["two_pass", "single_pass"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width,channels", [(1, 48, 16), (37, 80, 16), (100, 96, 24), (4099, 48, 16)])
def test_adapter_in_matches_reference(device, poisoned, dtype, rows, width, channels, single_pass, one_dot):
    gen = torch.Generator().manual_seed(rows * 1000 + width + channels)
    # A large common offset per row: the kernel must centre before squaring (no E[x²]-E[x]² cancellation).
    x = _randn(gen, rows, width, scale=2.0) + _randn(gen, rows, 1, scale=30.0)
    w_norm, w_raw = _randn(gen, channels, width, scale=0.1), _randn(gen, channels, width, scale=0.1)
    bias = _randn(gen, channels)
    args = [t.to(device=device, dtype=dtype) for t in (x, w_norm, w_raw, bias)]
    actual = adapter_in_triton(*args, 1e-5, tuning=dict(single_pass=single_pass, one_dot=one_dot))
    expected = adapter_in_ref(*[t.cpu().double() for t in args], 1e-5)
    assert actual.dtype == dtype
    assert_relative(actual.cpu(), expected, RELATIVE[dtype],
                    f"adapter_in {dtype} {rows}x{width}->{channels} single_pass={single_pass} one_dot={one_dot}")


def test_adapter_in_accepts_strided_rows(device, poisoned):
    gen = torch.Generator().manual_seed(7)
    x = _randn(gen, 64, 21).to(device).t()  # [21, 64], column-major
    w_norm, w_raw, bias = _randn(gen, 16, 64).to(device), _randn(gen, 16, 64).to(device), _randn(gen, 16).to(device)
    assert not x.is_contiguous()
    actual = adapter_in_triton(x, w_norm, w_raw, bias, 1e-6)
    expected = adapter_in_ref(x.cpu().double(), w_norm.cpu().double(), w_raw.cpu().double(), bias.cpu().double(), 1e-6)
    assert_relative(actual.cpu(), expected, RELATIVE[torch.float32], "adapter_in strided")


def test_adapter_in_past_int32_offsets_runs_the_reference(device, poisoned, monkeypatch):
    """adapter_in's kernel indexes x and z in int32: where an offset would not fit, both launchers run the
    reference's torch ops (the pooled one with one partial sum per image), never the kernel."""
    import htkernels._tune as tune
    import htkernels.adapter_in as adapter_in_module

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("the Triton kernel was launched past the int32 limit")

    gen = torch.Generator().manual_seed(11)
    tokens, images = 7, 3
    x = _randn(gen, tokens * images, 16, scale=2.0)
    w_norm, w_raw, bias = _randn(gen, 16, 16, scale=0.1), _randn(gen, 16, 16, scale=0.1), _randn(gen, 16)
    args = [t.to(device) for t in (x, w_norm, w_raw, bias)]
    monkeypatch.setattr(tune, "INT32_LIMIT", 200)  # x's last offset is 20·16 + 15 = 335
    monkeypatch.setattr(adapter_in_module, "_adapter_in_kernel", NoLaunch())
    expected = adapter_in_ref(*[t.cpu().double() for t in args], 1e-5)
    assert_relative(adapter_in_triton(*args, 1e-5).cpu(), expected, RELATIVE[torch.float32], "adapter_in past int32")
    z, partials = adapter_in_pooled_triton(*args, 1e-5, tokens)
    assert_relative(z.cpu(), expected, RELATIVE[torch.float32], "adapter_in_pooled past int32")
    assert partials.shape == (images, 1, 16) and partials.dtype == torch.float32
    image_sums = z.cpu().double().view(images, tokens, 16)[:, 1:].sum(1)
    assert torch.allclose(partials.cpu().double().sum(1), image_sums, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,channels,width", [(1, 16, 48), (37, 16, 80), (100, 24, 96), (4099, 16, 48)])
def test_adapter_out_matches_reference(device, poisoned, dtype, rows, channels, width):
    gen = torch.Generator().manual_seed(rows * 1000 + width + channels + 1)
    g, w2 = _randn(gen, rows, channels), _randn(gen, width, channels, scale=0.2)
    b2, residual = _randn(gen, width), _randn(gen, rows, width, scale=3.0)
    args = [t.to(device=device, dtype=dtype) for t in (g, w2, b2, residual)]
    actual = adapter_out_triton(*args)
    expected = adapter_out_ref(*[t.cpu().double() for t in args])
    assert actual.dtype == dtype
    assert_relative(actual.cpu(), expected, RELATIVE[dtype], f"adapter_out {dtype} {rows}x{channels}->{width}")


def test_adapter_out_accepts_strided_residual(device, poisoned):
    gen = torch.Generator().manual_seed(8)
    g, w2, b2 = _randn(gen, 19, 16).to(device), _randn(gen, 40, 16).to(device), _randn(gen, 40).to(device)
    residual = _randn(gen, 40, 19).to(device).t()
    actual = adapter_out_triton(g, w2, b2, residual)
    expected = adapter_out_ref(g.cpu().double(), w2.cpu().double(), b2.cpu().double(), residual.cpu().double())
    assert_relative(actual.cpu(), expected, RELATIVE[torch.float32], "adapter_out strided")


def test_gemm_launchers_reject_bad_shapes(device):
    from htkernels.errors import KernelInputError

    x = torch.randn(5, 48, device=device)
    with pytest.raises(KernelInputError, match="w_raw"):
        adapter_in_triton(x, torch.randn(16, 48, device=device), torch.randn(16, 40, device=device),
                          torch.randn(16, device=device), 1e-5)
    with pytest.raises(KernelInputError, match="residual"):
        adapter_out_triton(torch.randn(5, 16, device=device), torch.randn(48, 16, device=device),
                           torch.randn(48, device=device), torch.randn(6, 48, device=device))


@pytest.mark.parametrize("tuning", [dict(block_m=32, block_d=32, num_warps=2), dict(block_m=8, num_warps=8)])
def test_adapter_in_tuning_keeps_the_result(device, poisoned, tuning):
    gen = torch.Generator().manual_seed(11)
    args = [t.to(device) for t in (_randn(gen, 37, 80), _randn(gen, 16, 80, scale=0.1),
                                   _randn(gen, 16, 80, scale=0.1), _randn(gen, 16))]
    expected = adapter_in_ref(*[t.cpu().double() for t in args], 1e-5)
    assert_relative(adapter_in_triton(*args, 1e-5, tuning=tuning).cpu(), expected, RELATIVE[torch.float32],
                    f"adapter_in {tuning}")


@pytest.mark.parametrize("tuning", [dict(block_m=16, block_n=128, num_warps=8), dict(block_m=64, num_warps=2)])
def test_adapter_out_tuning_keeps_the_result(device, poisoned, tuning):
    gen = torch.Generator().manual_seed(12)
    args = [t.to(device) for t in (_randn(gen, 37, 16), _randn(gen, 80, 16), _randn(gen, 80), _randn(gen, 37, 80))]
    expected = adapter_out_ref(*[t.cpu().double() for t in args])
    assert_relative(adapter_out_triton(*args, tuning=tuning).cpu(), expected, RELATIVE[torch.float32],
                    f"adapter_out {tuning}")


def test_tuning_rejects_unknown_keys(device):
    from htkernels.errors import KernelInputError

    x = torch.randn(5, 48, device=device)
    with pytest.raises(KernelInputError, match=r"unknown tuning keys \['block_k'\]"):
        adapter_in_triton(x, torch.randn(16, 48, device=device), torch.randn(16, 48, device=device),
                          torch.randn(16, device=device), 1e-5, tuning=dict(block_k=32))
