"""`adapter_out`: the r→D GEMM with bias and the residual add as its epilogue (see htkernels/README.md)."""

from __future__ import annotations

from typing import Optional

import torch

from ._triton import (
    cdiv,
    check_launch,
    check_rank,
    check_shape,
    dot_low,
    interpret_bf16,
    jit,
    pow2_at_least,
    round_bf16,
    tl,
)
from ._tune import tuned_config


def adapter_out_ref(g: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """`y = residual + g @ w2ᵀ + b2`; g `[M,r]`, w2 `[D,r]`, b2 `[D]`, residual `[M,D]`."""
    y = residual.float() + g.float() @ w2.float().t() + b2.float()
    return y.to(residual.dtype)


@jit
def _adapter_out_kernel(
    g_ptr, w2_ptr, b2_ptr, res_ptr, y_ptr,  # g [M,r], w2 [D,r], b2 [D], residual [M,D] → y [M,D]
    M, D, R,
    stride_gm, stride_gr, stride_wd, stride_wr, stride_rm, stride_rd, stride_ym, stride_yd,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE_FP32: tl.constexpr,
    INTERPRET_BF16: tl.constexpr,
):
    """One program: a BLOCK_M×BLOCK_N tile of y. `y = residual + g @ w2ᵀ + b2` with the bias and the residual
    read in the epilogue, so the GEMM result never goes to memory on its own. fp32 accumulation."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < D
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, R, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < R
        g = tl.load(g_ptr + rows[:, None] * stride_gm + ks[None, :] * stride_gr,
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w2_ptr + ks[:, None] * stride_wr + cols[None, :] * stride_wd,
                    mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        if IEEE_FP32:
            acc += tl.dot(g.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        else:
            acc += dot_low(g, w.to(g.dtype), INTERPRET_BF16)
    mask = row_mask[:, None] & col_mask[None, :]
    bias = tl.load(b2_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    res = tl.load(res_ptr + rows[:, None] * stride_rm + cols[None, :] * stride_rd, mask=mask, other=0.0)
    y = res.to(tl.float32) + acc + bias[None, :]
    y = round_bf16(y, INTERPRET_BF16)
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :] * stride_yd, y.to(y_ptr.dtype.element_ty), mask=mask)


def tuning_candidates(rows: int) -> list:
    """Launch configurations the tuner (`htkernels._tune`) times for `rows` rows; the first is the default
    (32×64 tiles up to 4096 rows, 64×128 beyond)."""
    if rows <= 4096:
        shapes = [(32, 64, 4), (16, 64, 4), (64, 64, 4), (32, 64, 8), (32, 128, 4)]
    else:
        shapes = [(64, 128, 4), (64, 64, 4), (128, 128, 8), (128, 64, 4), (64, 128, 8)]
    return [dict(block_m=m, block_n=n, num_warps=w) for m, n, w in shapes]


def adapter_out_triton(g: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, residual: torch.Tensor,
                       tuning: Optional[dict] = None) -> torch.Tensor:
    """Launcher of `_adapter_out_kernel`: checks, output allocation (dtype of `residual`), grid. Any strides.

    The launch configuration (`block_m`, `block_n`, `num_warps`) is the tuner's choice among `tuning_candidates`
    on a GPU; `tuning` overrides keys of the default instead."""
    check_launch("adapter_out", dict(g=g, w2=w2, b2=b2, residual=residual))
    check_rank("adapter_out", "g", g, "[M, r]")
    check_rank("adapter_out", "residual", residual, "[M, D]")
    rows, channels = g.shape
    width = residual.shape[1]
    check_shape("adapter_out", "w2", w2, (width, channels))
    check_shape("adapter_out", "b2", b2, (width,))
    check_shape("adapter_out", "residual", residual, (rows, width))
    y = torch.empty((rows, width), device=residual.device, dtype=residual.dtype)
    if rows == 0:
        return y
    block_k = min(pow2_at_least(channels), 64)

    def launch(config):
        block_m, block_n = config["block_m"], config["block_n"]
        _adapter_out_kernel[(cdiv(rows, block_m), cdiv(width, block_n))](
            g, w2, b2, residual, y, rows, width, channels,
            g.stride(0), g.stride(1), w2.stride(0), w2.stride(1), residual.stride(0), residual.stride(1),
            y.stride(0), y.stride(1),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, IEEE_FP32=g.dtype == torch.float32,
            INTERPRET_BF16=interpret_bf16(g.dtype), num_warps=config["num_warps"],
        )

    launch(tuned_config("adapter_out", (rows, width, channels, g.dtype, residual.dtype), tuning_candidates(rows),
                        launch, residual.device, tuning))
    return y


@torch.library.custom_op("htkernels::adapter_out", mutates_args=(), device_types="cpu")
def adapter_out(g: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The public op: the reference on CPU, the Triton kernel on CUDA."""
    return adapter_out_ref(g, w2, b2, residual)


@adapter_out.register_kernel("cuda")
def _adapter_out_cuda(g, w2, b2, residual):
    return adapter_out_triton(g, w2, b2, residual)


@adapter_out.register_fake
def _adapter_out_fake(g, w2, b2, residual):
    return residual.new_empty((g.shape[0], w2.shape[0]))
