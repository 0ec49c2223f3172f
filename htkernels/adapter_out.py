"""`adapter_out`: the r→D GEMM with bias and the residual add as its epilogue (see htkernels/README.md)."""

from __future__ import annotations

from typing import Optional

import torch

from ._arrival import arrival_counters, reset_counters
from ._registry import register_op
from ._triton import (
    cdiv,
    check_launch,
    check_rank,
    check_shape,
    grouped_tile,
    interpret_bf16,
    jit,
    matmul_tile,
    pdl_options,
    pow2_at_least,
    round_bf16,
    split_k_tile,
    tl,
    wait_for_producer,
)
from ._tune import TORCH_IMPL, check_impl, int32_offsets, output_mismatch, tuned_config
from .errors import KernelInputError


def adapter_out_ref(g: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """`y = residual + g @ w2ᵀ + b2`; g `[M,r]`, w2 `[D,r]`, b2 `[D]`, residual `[M,D]`."""
    y = residual.float() + g.float() @ w2.float().t() + b2.float()
    return y.to(residual.dtype)


@jit
def _adapter_out_kernel(
    g_ptr, w2_ptr, b2_ptr, res_ptr, y_ptr,  # g [M,r], w2 [D,r], b2 [D], residual [M,D] → y [M,D]
    ws_ptr, count_ptr,  # SPLIT_K > 1: fp32 [SPLIT_K, M, D] parts, int32 [tiles] arrival counters (0 between launches)
    M, D, R,
    stride_gm, stride_gr, stride_wd, stride_wr, stride_rm, stride_rd, stride_ym, stride_yd,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, IEEE_FP32: tl.constexpr, INTERPRET_BF16: tl.constexpr, PDL: tl.constexpr,
):
    """One program: a BLOCK_M×BLOCK_N tile of y. `y = residual + g @ w2ᵀ + b2` with the bias and the residual
    read in the epilogue, so the GEMM result never goes to memory on its own. fp32 accumulation. SPLIT_K > 1: the
    tile's K range split over SPLIT_K programs (`split_k_tile`), the last of which to finish runs the epilogue."""
    wait_for_producer(PDL)
    rows, cols = grouped_tile(M, D, BLOCK_M, BLOCK_N, GROUP_M)
    if SPLIT_K == 1:
        acc = matmul_tile(g_ptr, w2_ptr, rows, cols, M, D, R, stride_gm, stride_gr, stride_wd, stride_wr,
                          BLOCK_M, BLOCK_N, BLOCK_K, IEEE_FP32, INTERPRET_BF16)
        residual_epilogue(acc, rows, cols, rows < M, D, b2_ptr, res_ptr, y_ptr, stride_rm, stride_rd, stride_ym,
                          stride_yd, INTERPRET_BF16)
    else:
        last, acc = split_k_tile(g_ptr, w2_ptr, ws_ptr, count_ptr, rows, cols, M, D, R, stride_gm, stride_gr,
                                 stride_wd, stride_wr, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, IEEE_FP32, INTERPRET_BF16)
        if last:
            residual_epilogue(acc, rows, cols, rows < M, D, b2_ptr, res_ptr, y_ptr, stride_rm, stride_rd, stride_ym,
                              stride_yd, INTERPRET_BF16)


@jit
def residual_epilogue(acc, rows, cols, row_mask, D, b_ptr, res_ptr, y_ptr, stride_rm, stride_rd, stride_ym, stride_yd,
                      INTERPRET_BF16: tl.constexpr):
    """The store of a GEMM tile with bias and residual: `y[rows, cols] = residual + acc + b`, summed in fp32 in that
    order and rounded once to the dtype of y (rows where `row_mask`, columns below D)."""
    col_mask = cols < D
    mask = row_mask[:, None] & col_mask[None, :]
    bias = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    res = tl.load(res_ptr + rows[:, None] * stride_rm + cols[None, :] * stride_rd, mask=mask, other=0.0)
    y = round_bf16(res.to(tl.float32) + acc + bias[None, :], INTERPRET_BF16)
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :] * stride_yd, y.to(y_ptr.dtype.element_ty), mask=mask)


def tuning_candidates(rows: int, inner: int = 64) -> list:
    """Launch configurations the tuner (`htkernels._tune`) times for `rows` rows and inner size `inner`; the first
    is the default.

    The adapter's r→D GEMM (inner ≤ 128): 32×64 tiles up to 4096 rows, 64×128 beyond. As the block's attention
    projection and fc2 (inner 768, 3072) the default is cuBLAS and a separate add (`impl="torch"`), against
    Triton tiles of the Hopper sizes; the tuner keeps the Triton kernel only where it is faster. Up to 512 rows
    (batch 1-2) those D = 768 outputs are 48-84 tiles for an H100's 132 SMs, so the Triton tiles are also offered
    split along K over 2 or 4 programs (`split_k`; not yet measured on a GPU: the tuner keeps one only where it
    times faster, and only once its output matched the default's)."""
    if inner <= 128:
        shapes = [(32, 64, 4, 3), (16, 64, 4, 3), (64, 64, 4, 3), (32, 64, 8, 3), (32, 128, 4, 3)] if rows <= 4096 \
            else [(64, 128, 4, 3), (64, 64, 4, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 128, 8, 3)]
        return [dict(impl="triton", block_m=m, block_n=n, num_warps=w, num_stages=st, split_k=1)
                for m, n, w, st in shapes]
    shapes = [(32, 64, 4, 4, 1), (64, 64, 4, 4, 1), (64, 128, 4, 3, 1)] if rows <= 512 \
        else [(128, 128, 8, 3, 1), (128, 256, 8, 3, 1), (128, 128, 4, 4, 1), (64, 128, 4, 4, 1)]
    if rows <= 512:
        shapes += [(m, 64, 4, 4, split) for m in (32, 64) for split in (2, 4)]
    return [dict(TORCH_IMPL, split_k=1)] + [dict(impl="triton", block_m=m, block_n=n, num_warps=w, num_stages=st,
                                                 split_k=split) for m, n, w, st, split in shapes]


def _check_tuning(config: dict) -> None:
    check_impl("adapter_out")(config)
    if not isinstance(config["split_k"], int) or config["split_k"] < 1:
        raise KernelInputError(f"htkernels::adapter_out: tuning split_k={config['split_k']!r}; expected an int ≥ 1")


def adapter_out_triton(g: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, residual: torch.Tensor,
                       tuning: Optional[dict] = None, poison: bool = False) -> torch.Tensor:
    """Launcher of `_adapter_out_kernel`: checks, output allocation (dtype of `residual`), grid. Any strides.

    The launch configuration (`impl`, `block_m`, `block_n`, `num_warps`, `num_stages`, `split_k`) is the tuner's
    choice among `tuning_candidates` on a GPU; `tuning` overrides keys of the default instead. `poison`: the
    kernel's output and split-K parts filled with NaN first (the tuner's output check)."""
    op = "adapter_out"
    check_launch(op, dict(g=g, w2=w2, b2=b2, residual=residual))
    check_rank(op, "g", g, "[M, r]")
    check_rank(op, "residual", residual, "[M, D]")
    rows, channels = g.shape
    width = residual.shape[1]
    check_shape(op, "w2", w2, (width, channels))
    check_shape(op, "b2", b2, (width,))
    check_shape(op, "residual", residual, (rows, width))
    if rows == 0:
        return torch.empty((rows, width), device=residual.device, dtype=residual.dtype)
    block_k = min(pow2_at_least(channels), 64)
    kept = {}  # the kernel's output and split-K parts, allocated once and only if it runs (cuBLAS allocates its own)

    def kept_buffer(name, shape, dtype):
        if name not in kept:
            kept[name] = torch.empty(shape, device=residual.device, dtype=dtype)
        return kept[name]

    def launch(config, poison=False):
        if config["impl"] == "torch":
            return torch.addmm(b2.to(g.dtype), g, w2.t().to(g.dtype)).to(residual.dtype).add_(residual)
        block_m, block_n, split = config["block_m"], config["block_n"], config["split_k"]
        tiles = cdiv(rows, block_m) * cdiv(width, block_n)
        # A poisoned launch (the output check) gets an output of its own, compared with the default's.
        y = torch.empty((rows, width), device=residual.device, dtype=residual.dtype) if poison \
            else kept_buffer("y", (rows, width), residual.dtype)
        parts = counters = y  # unused without split-K
        if split > 1:
            parts = kept_buffer(split, (split, rows, width), torch.float32)
            counters = arrival_counters(op, residual.device, w2, tiles)
        if poison:
            y.fill_(float("nan"))
            parts.fill_(float("nan"))
        _adapter_out_kernel[(tiles, split)](
            g, w2, b2, residual, y, parts, counters, rows, width, channels,
            g.stride(0), g.stride(1), w2.stride(0), w2.stride(1), residual.stride(0), residual.stride(1),
            y.stride(0), y.stride(1),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8, SPLIT_K=split,
            IEEE_FP32=g.dtype == torch.float32, INTERPRET_BF16=interpret_bf16(g.dtype),
            num_warps=config["num_warps"], num_stages=config["num_stages"], **pdl_options(g.device),
        )
        return y

    def verify(config):
        wrong = output_mismatch(launch(config, poison=True), launch(candidates[0]))
        if wrong is not None and config["split_k"] > 1:  # its counters may be left non-zero
            reset_counters(op, residual.device, w2, cdiv(rows, config["block_m"]) * cdiv(width, config["block_n"]))
        return wrong

    # Past int32 element offsets (beyond ~14,000 images at r=64) only cuBLAS runs; split-K's parts count too.
    if int32_offsets(g, w2, residual, output_elements=rows * width):
        candidates = [c for c in tuning_candidates(rows, channels)
                      if int32_offsets(output_elements=c["split_k"] * rows * width)]
    else:
        candidates = [dict(TORCH_IMPL, split_k=1)]
    config = tuned_config(op, (rows, width, channels, g.dtype, residual.dtype), candidates, launch, residual.device,
                          tuning, _check_tuning, verify)
    return launch(config, poison)


def _adapter_out_fake(g, w2, b2, residual):
    return residual.new_empty((g.shape[0], w2.shape[0]))


@register_op("adapter_out", cuda=adapter_out_triton, fake=_adapter_out_fake)
def adapter_out(g: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The public op: the reference on CPU, the Triton kernel on CUDA."""
    return adapter_out_ref(g, w2, b2, residual)
