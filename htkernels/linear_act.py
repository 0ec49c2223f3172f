"""`linear_act`: a linear layer with its bias and activation as the GEMM's epilogue (see htkernels/README.md).

The block's fc1 (`D → 4D`, then GELU or QuickGELU): on its own, the activation is a full read and write of the
widest activation of the model, memory-bound work between two GEMMs; in the epilogue it is applied to the fp32
accumulator before the only store.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._registry import register_op
from ._triton import (
    cdiv,
    check_launch,
    check_rank,
    check_shape,
    gelu_erf,
    grouped_tile,
    interpret_bf16,
    jit,
    matmul_tile,
    pdl_options,
    round_bf16,
    tl,
    wait_for_producer,
)
from ._tune import TORCH_IMPL, check_impl, int32_offsets, tuned_config
from .errors import KernelInputError

# Activation names → the kernel's ACTIVATION constexpr.
ACTIVATIONS = {"none": 0, "gelu": 1, "quick_gelu": 2}


def activation_ref(x: torch.Tensor, activation: str) -> torch.Tensor:
    """`x` through the named activation: GELU with erf, QuickGELU `x·σ(1.702x)` (CLIP), or none."""
    if activation == "gelu":
        return F.gelu(x)
    if activation == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    return x


def linear_act_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, activation: str) -> torch.Tensor:
    """`act(x @ weightᵀ + bias)` in fp32, returned in the dtype of x; x `[M,K]`, weight `[N,K]`, bias `[N]`."""
    return activation_ref(x.float() @ weight.float().t() + bias.float(), activation).to(x.dtype)


@jit
def _linear_act_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,  # x [M,K], w [N,K], b [N] → y [M,N]
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ACTIVATION: tl.constexpr, IEEE_FP32: tl.constexpr, INTERPRET_BF16: tl.constexpr, PDL: tl.constexpr,
):
    """One program: a BLOCK_M×BLOCK_N tile of `y = act(x @ wᵀ + b)`, fp32 accumulation, the bias and the
    activation (0 none, 1 GELU erf, 2 QuickGELU) on the accumulator, one store in the dtype of y."""
    wait_for_producer(PDL)
    rows, cols = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    acc = matmul_tile(x_ptr, w_ptr, rows, cols, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk,
                      BLOCK_M, BLOCK_N, BLOCK_K, IEEE_FP32, INTERPRET_BF16)
    col_mask = cols < N
    acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if ACTIVATION == 1:
        acc = gelu_erf(acc)
    elif ACTIVATION == 2:
        acc = acc * tl.sigmoid(1.702 * acc)
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :] * stride_yn,
             round_bf16(acc, INTERPRET_BF16).to(y_ptr.dtype.element_ty), mask=(rows < M)[:, None] & col_mask[None, :])


def tuning_candidates(rows: int) -> list:
    """Launch configurations the tuner (`htkernels._tune`) times for `rows` rows; the first is the default:
    cuBLAS and the activation as a separate op (`impl="torch"`), the others the fused kernel in Hopper-sized
    tiles. The fused kernel runs only where the tuner measured it faster."""
    shapes = [(32, 64, 4, 4), (64, 64, 4, 4), (64, 128, 4, 3), (32, 128, 4, 4)] if rows <= 512 \
        else [(128, 128, 8, 3), (128, 256, 8, 3), (128, 128, 4, 4), (64, 128, 4, 4), (64, 256, 8, 3)]
    return [TORCH_IMPL] + [dict(impl="triton", block_m=m, block_n=n, num_warps=w, num_stages=st)
                           for m, n, w, st in shapes]


def linear_act_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, activation: str,
                      tuning: Optional[dict] = None) -> torch.Tensor:
    """Launcher of `_linear_act_kernel`: checks, output allocation (dtype of x), grid. Any strides.

    The launch configuration (`impl`, `block_m`, `block_n`, `num_warps`, `num_stages`) is the tuner's choice among
    `tuning_candidates` on a GPU; `tuning` overrides keys of the default instead."""
    op = "linear_act"
    if activation not in ACTIVATIONS:
        raise KernelInputError(f"htkernels::{op}: activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    check_launch(op, dict(x=x, weight=weight, bias=bias))
    check_rank(op, "x", x, "[M, K]")
    rows, inner = x.shape
    outputs = weight.shape[0]
    check_shape(op, "weight", weight, (outputs, inner))
    check_shape(op, "bias", bias, (outputs,))
    if rows == 0:
        return torch.empty((rows, outputs), device=x.device, dtype=x.dtype)
    allocated = []  # the fused kernel's output, allocated once and only if it runs (cuBLAS allocates its own)

    def launch(config):
        if config["impl"] == "torch":
            return activation_ref(F.linear(x, weight.to(x.dtype), bias.to(x.dtype)), activation)
        if not allocated:
            allocated.append(torch.empty((rows, outputs), device=x.device, dtype=x.dtype))
        y = allocated[0]
        block_m, block_n = config["block_m"], config["block_n"]
        _linear_act_kernel[(cdiv(rows, block_m) * cdiv(outputs, block_n),)](
            x, weight, bias, y, rows, outputs, inner,
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=64, GROUP_M=8, ACTIVATION=ACTIVATIONS[activation],
            IEEE_FP32=x.dtype == torch.float32, INTERPRET_BF16=interpret_bf16(x.dtype),
            num_warps=config["num_warps"], num_stages=config["num_stages"], **pdl_options(x.device),
        )
        return y

    # Past int32 element offsets (fc1 beyond ~3500 images at 224 px) only cuBLAS runs.
    candidates = tuning_candidates(rows) if int32_offsets(x, weight, output_elements=rows * outputs) else [TORCH_IMPL]
    return launch(tuned_config(op, (rows, inner, outputs, x.dtype, activation), candidates, launch, x.device, tuning,
                               check_impl(op)))


def _linear_act_fake(x, weight, bias, activation):
    return x.new_empty((x.shape[0], weight.shape[0]))


@register_op("linear_act", cuda=linear_act_triton, fake=_linear_act_fake)
def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, activation: str) -> torch.Tensor:
    """The public op: the reference on CPU, the tuned choice of cuBLAS + activation or the fused kernel on CUDA."""
    return linear_act_ref(x, weight, bias, activation)
