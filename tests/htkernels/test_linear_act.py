"""linear_act (GEMM + bias + activation epilogue) and adapter_out at the block's inner sizes, against references."""

import pytest
import torch

from htkernels.adapter_out import tuning_candidates as out_candidates
from htkernels.errors import KernelInputError
from htkernels.linear_act import linear_act_ref, linear_act_triton, tuning_candidates

from ..tolerances import RELATIVE, assert_relative

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FUSED = dict(impl="triton", block_m=32, block_n=64, num_warps=4, num_stages=2)


def dense_args(rows, inner, outputs, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, inner, generator=gen), torch.randn(outputs, inner, generator=gen) * inner ** -0.5,
            torch.randn(outputs, generator=gen) * 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["gelu", "quick_gelu", "none"])
@pytest.mark.parametrize("rows,inner,outputs", [(1, 48, 80), (37, 80, 136), (70, 96, 40)])
def test_fused_linear_act_matches_reference(device, poisoned, dtype, activation, rows, inner, outputs):
    args = [t.to(device=device, dtype=dtype) for t in dense_args(rows, inner, outputs, seed=rows + inner)]
    actual = linear_act_triton(*args, activation, tuning=FUSED)
    expected = linear_act_ref(*[t.cpu().double() for t in args], activation)
    assert actual.dtype == dtype
    assert_relative(actual.cpu(), expected, RELATIVE[dtype], f"linear_act {activation} {dtype} {rows}x{inner}")


@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
def test_torch_implementation_matches_reference(device, poisoned, activation):
    args = [t.to(device) for t in dense_args(21, 48, 40, seed=2)]
    actual = linear_act_triton(*args, activation, tuning=dict(impl="torch"))
    assert_relative(actual.cpu(), linear_act_ref(*[t.cpu().double() for t in args], activation),
                    RELATIVE[torch.float32], f"linear_act torch {activation}")


def test_fused_linear_act_strided_input(device, poisoned):
    x, weight, bias = dense_args(33, 48, 40, seed=3)
    wide = torch.randn(48, 70).to(device)
    wide[:, 5:38] = x.t().to(device)
    view = wide[:, 5:38].t()  # [33, 48] with row stride 1, column stride 70
    actual = linear_act_triton(view, weight.to(device), bias.to(device), "gelu", tuning=FUSED)
    assert_relative(actual.cpu(), linear_act_ref(x.double(), weight.double(), bias.double(), "gelu"),
                    RELATIVE[torch.float32], "linear_act strided")


CANDIDATES = [c for rows in (197, 50432) for c in tuning_candidates(rows) if c["impl"] == "triton"]


@pytest.mark.parametrize("config", CANDIDATES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_every_linear_act_candidate(device, poisoned, config):
    args = [t.to(device) for t in dense_args(45, 80, 136, seed=4)]
    actual = linear_act_triton(*args, "gelu", tuning=config)
    assert_relative(actual.cpu(), linear_act_ref(*[t.cpu().double() for t in args], "gelu"),
                    RELATIVE[torch.float32], f"linear_act {config}")


def test_wide_adapter_out_defaults_to_cublas_and_narrow_to_the_kernel():
    assert out_candidates(197, 768)[0]["impl"] == "torch"
    assert out_candidates(197, 64)[0]["impl"] == "triton"
    assert tuning_candidates(197)[0]["impl"] == "torch"


def test_linear_act_rejects_bad_input(device):
    x, weight, bias = (t.to(device) for t in dense_args(5, 16, 8, seed=6))
    with pytest.raises(KernelInputError, match="activation 'relu'"):
        linear_act_triton(x, weight, bias, "relu")
    with pytest.raises(KernelInputError, match=r"weight has shape \[8, 16\], expected \[8, 17\]"):
        linear_act_triton(torch.randn(5, 17, device=device), weight, bias, "gelu")
    with pytest.raises(KernelInputError, match=r"x must be \[M, K\]"):
        linear_act_triton(x[None], weight, bias, "gelu")
    with pytest.raises(KernelInputError, match="impl='cublas'"):
        linear_act_triton(x, weight, bias, "gelu", tuning=dict(impl="cublas"))
    with pytest.raises(KernelInputError, match="power-of-two block_m"):
        linear_act_triton(x, weight, bias, "gelu", tuning=dict(impl="triton", block_m=24))
    with pytest.raises(KernelInputError, match="num_stages ≥ 1"):
        linear_act_triton(x, weight, bias, "gelu", tuning=dict(impl="triton", num_stages=0))


def test_explicit_triton_tuning_starts_from_the_first_fused_candidate(device, poisoned):
    """`tuning=dict(impl="triton")` where cuBLAS is the default: the first fused candidate, not cuBLAS's zeros."""
    args = [t.to(device) for t in dense_args(19, 48, 40, seed=7)]
    actual = linear_act_triton(*args, "quick_gelu", tuning=dict(impl="triton"))
    assert_relative(actual.cpu(), linear_act_ref(*[t.cpu().double() for t in args], "quick_gelu"),
                    RELATIVE[torch.float32], "linear_act impl=triton")


def test_past_int32_offsets_only_cublas_runs(device, poisoned, monkeypatch):
    """The GEMM kernels index in int32: where an offset would not fit, the launchers keep to torch's ops."""
    import htkernels._tune as tune
    import htkernels.adapter_out as adapter_out_module
    import htkernels.linear_act as linear_act_module

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("the Triton kernel was launched past the int32 limit")

    monkeypatch.setattr(tune, "INT32_LIMIT", 200)
    monkeypatch.setattr(linear_act_module, "_linear_act_kernel", NoLaunch())
    monkeypatch.setattr(adapter_out_module, "_adapter_out_kernel", NoLaunch())
    args = [t.to(device) for t in dense_args(19, 16, 40, seed=8)]
    actual = linear_act_triton(*args, "gelu", tuning=None)
    assert_relative(actual.cpu(), linear_act_ref(*[t.cpu().double() for t in args], "gelu"), RELATIVE[torch.float32],
                    "linear_act past int32")
    g, w2, b2 = args
    residual = torch.randn(19, 40).to(device)
    actual = adapter_out_module.adapter_out_triton(g, w2, b2, residual)  # narrow: the kernel is its default
    assert_relative(actual.cpu(), adapter_out_module.adapter_out_ref(*[t.cpu().double() for t in (g, w2, b2, residual)]),
                    RELATIVE[torch.float32], "adapter_out past int32")
    assert not tune.int32_offsets(torch.empty(20, 20, device="meta"))
    assert tune.int32_offsets(torch.empty(10, 10, device="meta"))
    assert not tune.int32_offsets(torch.empty(10, 10, device="meta"), output_elements=201)
