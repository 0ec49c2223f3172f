"""`residual_adapter`: the block's fc2 with its residual add, then the whole adapter (see htkernels/README.md).

One op for the pair so that the launch tuner can take adapter_in into the fc2 kernel: at batch 1 each block is a
handful of small kernels, each costing its launch gap, and adapter_in is one of them. adapter_in needs whole rows of
the block's output x, while a GEMM program owns one BLOCK_N-wide column tile of them; so each program of the fused
kernel stores its tile of x, then counts itself in for its row tile (one atomic counter per row tile), and the
program that arrives last, when every column tile of those rows is written, runs adapter_in on them (reading x
back from L2) and stores z and the partial sums of the image mean (`adapter_in_rows`, POOL). The spatial kernel
follows, reading the partials (`adapter_spatial_out_triton(..., partials=)`): two kernels for what is otherwise
three.
"""

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
    interpret_bf16,
    jit,
    matmul_tile,
    pdl_options,
    pow2_at_least,
    tl,
    wait_for_producer,
)
from ._tune import check_impl, int32_offsets, output_mismatch, tuned_config
from .adapter import adapter_ref, adapter_triton
from .adapter_in import adapter_in_rows
from .adapter_out import adapter_out_ref, adapter_out_triton, residual_epilogue
from .adapter_spatial import adapter_spatial_out_triton
from .errors import KernelInputError

# The two ops one after the other (the default), each with its own tuned launch.
SEPARATE = dict(impl="separate", block_m=0, block_n=0, num_warps=0, num_stages=0, block_d=0, single_pass=False,
                one_dot=False)


def residual_adapter_ref(hidden, weight, bias, residual, h: int, w: int, w_norm, w_raw, in_bias, eps: float, spectral,
                         k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj, proj_bias, w2,
                         b2) -> torch.Tensor:
    """`x = residual + hidden @ weightᵀ + bias` (stored in the dtype of residual), then `adapter_ref(x, ...)`: hidden
    `[B, N, K]`, weight `[D, K]`, bias `[D]`, residual `[B, N, D]`, the adapter's weights as for `adapter`."""
    batch, tokens, width = residual.shape
    x = adapter_out_ref(hidden.reshape(batch * tokens, -1), weight, bias, residual.reshape(-1, width))
    return adapter_ref(x.view(batch, tokens, width), h, w, w_norm, w_raw, in_bias, eps, spectral, k3, k5, k7,
                       conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2)


@jit
def _residual_adapter_in_kernel(
    h_ptr, w_ptr, b_ptr, res_ptr, x_ptr,  # hidden [M,K], weight [D,K], bias [D], residual [M,D] → x [M,D]
    w_norm_ptr, w_raw_ptr, in_bias_ptr, z_ptr, partial_ptr,  # adapter_in's weights → z [M,r], fp32 partials [B,P,r]
    count_ptr,  # int32 [B·P]: per row tile, how many of its column tiles are stored; back to 0 when all are
    T, M, D, K, R, eps,
    stride_hm, stride_hk, stride_wd, stride_wk, stride_rm, stride_rd, stride_xm, stride_xd,
    stride_nr, stride_nd, stride_ar, stride_ad, stride_zm, stride_zr, stride_pb, stride_pt,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr, IEEE_FP32: tl.constexpr, INTERPRET_BF16: tl.constexpr, SINGLE_PASS: tl.constexpr,
    ONE_DOT: tl.constexpr, PDL: tl.constexpr,
):
    """One program: the BLOCK_M×BLOCK_N tile `program_id(0)` (column tiles fastest) of image `program_id(1)`'s rows
    of `x = residual + hidden @ weightᵀ + bias` (each image of T rows tiled on its own, as adapter_in's POOL needs);
    then, if it is the last of its row tile to arrive, adapter_in of those BLOCK_M rows.

    The arrival is an acquire-release atomic add at GPU scope after a barrier of the program's threads: every
    store of x before it, in every program of the row tile, is visible to the last one, which reads x past its
    L1 (`.cg`). The last program also puts the counter back to 0, so the buffer is ready for the next launch
    (a CUDA graph replays the kernel on the same counters)."""
    wait_for_producer(PDL)
    tiles_n = tl.cdiv(D, BLOCK_N)
    tile = tl.program_id(0) // tiles_n
    group = tl.program_id(1)
    in_group = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = group * T + in_group
    cols = (tl.program_id(0) % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    # Rows past the image (the next image's, or past M) are computed as the matmul's masks allow, never stored.
    acc = matmul_tile(h_ptr, w_ptr, rows, cols, M, D, K, stride_hm, stride_hk, stride_wd, stride_wk,
                      BLOCK_M, BLOCK_N, BLOCK_K, IEEE_FP32, INTERPRET_BF16)
    residual_epilogue(acc, rows, cols, in_group < T, D, b_ptr, res_ptr, x_ptr, stride_rm, stride_rd, stride_xm,
                      stride_xd, INTERPRET_BF16)
    tl.debug_barrier()
    counter = count_ptr + group * tl.cdiv(T, BLOCK_M) + tile
    if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == tiles_n - 1:
        tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")
        adapter_in_rows(x_ptr, w_norm_ptr, w_raw_ptr, in_bias_ptr, z_ptr, partial_ptr, group, tile, T, D, R, eps,
                        stride_xm, stride_xd, stride_nr, stride_nd, stride_ar, stride_ad, stride_zm, stride_zr,
                        stride_pb, stride_pt, BLOCK_M, BLOCK_R, BLOCK_D, IEEE_FP32, INTERPRET_BF16, SINGLE_PASS,
                        ONE_DOT, True, True)


def candidates(rows: int) -> list:
    """The tuner's candidates for `rows` = B·N rows; the first, the two ops as they are, is the default. The fused
    kernel in GEMM tiles of the fc2 launcher's sizes (rows per image tile, no taller than needed), its adapter_in
    tail in one pass over D, with two 64-wide dots or one 128-wide (not yet measured on a GPU: the tuner keeps a
    fused candidate only where it times faster, and only once its output matched the default's)."""
    tiles = [(16, 64, 4, 4), (32, 64, 4, 4), (16, 128, 4, 3), (32, 128, 4, 3)] if rows <= 4096 \
        else [(64, 128, 4, 3), (128, 128, 8, 3), (64, 64, 4, 4)]
    return [SEPARATE] + [dict(impl="fused", block_m=m, block_n=n, num_warps=warps, num_stages=stages, block_d=64,
                              single_pass=True, one_dot=one_dot)
                         for one_dot in (False, True) for m, n, warps, stages in tiles]


def fused_residual_adapter_in(hidden2d, weight, bias, residual2d, w_norm, w_raw, in_bias, eps: float, tokens: int,
                              config: dict, poison: bool = False):
    """`(x [M, D], z [M, r], partials fp32 [B, P, r])` of one launch of the fused kernel in `config` (keys of
    `candidates`); `poison`: x and z filled with NaN first, so that a read of x before its store shows."""
    rows, inner = hidden2d.shape
    width = weight.shape[0]
    channels = w_norm.shape[0]
    block_m, block_n = config["block_m"], config["block_n"]
    images, tiles = rows // tokens, cdiv(tokens, block_m)
    x = torch.empty((rows, width), device=residual2d.device, dtype=residual2d.dtype)
    z = torch.empty((rows, channels), device=residual2d.device, dtype=residual2d.dtype)
    if poison:
        x.fill_(float("nan"))
        z.fill_(float("nan"))
    partials = torch.empty((images, tiles, channels), device=residual2d.device, dtype=torch.float32)
    counters = arrival_counters("residual_adapter", residual2d.device, weight, images * tiles)
    _residual_adapter_in_kernel[(tiles * cdiv(width, block_n), images)](
        hidden2d, weight, bias, residual2d, x, w_norm, w_raw, in_bias, z, partials, counters,
        tokens, rows, width, inner, channels, float(eps),
        hidden2d.stride(0), hidden2d.stride(1), weight.stride(0), weight.stride(1), residual2d.stride(0),
        residual2d.stride(1), x.stride(0), x.stride(1), w_norm.stride(0), w_norm.stride(1), w_raw.stride(0),
        w_raw.stride(1), z.stride(0), z.stride(1), partials.stride(0), partials.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=64, BLOCK_R=pow2_at_least(channels), BLOCK_D=config["block_d"],
        IEEE_FP32=residual2d.dtype == torch.float32, INTERPRET_BF16=interpret_bf16(residual2d.dtype),
        SINGLE_PASS=bool(config["single_pass"]), ONE_DOT=bool(config["one_dot"]), num_warps=config["num_warps"],
        num_stages=config["num_stages"], **pdl_options(residual2d.device),
    )
    return x, z, partials


def residual_adapter_triton(hidden, weight, bias, residual, h: int, w: int, w_norm, w_raw, in_bias, eps: float,
                            spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj, proj_bias,
                            w2, b2, tuning: Optional[dict] = None, poison: bool = False) -> torch.Tensor:
    """The tuner's choice of `adapter_out_triton` (fc2 + residual) then `adapter_triton` (`impl="separate"`) or
    the fused kernel then the spatial kernel reading its partials (`impl="fused"`). `tuning` names the impl and,
    for the fused one, overrides keys of its first configuration; `poison`: the fused kernel's x and z NaN-filled
    first (the tuner's output check; benchmarks/gpu_check.py's sweep)."""
    op = "residual_adapter"
    check_launch(op, dict(hidden=hidden, weight=weight, bias=bias, residual=residual, w_norm=w_norm, w_raw=w_raw,
                          in_bias=in_bias))
    check_rank(op, "hidden", hidden, "[B, N, K]")
    check_rank(op, "residual", residual, "[B, N, D]")
    batch, tokens, width = residual.shape
    inner = hidden.shape[-1]
    if tokens != 1 + h * w:
        raise KernelInputError(f"htkernels::{op}: residual has {tokens} tokens, expected 1 + {h}*{w} = {1 + h * w}")
    check_shape(op, "hidden", hidden, (batch, tokens, inner))
    check_shape(op, "weight", weight, (width, inner))
    check_shape(op, "bias", bias, (width,))
    channels = w_norm.shape[0]
    check_shape(op, "w_norm", w_norm, (channels, width))
    check_shape(op, "w_raw", w_raw, (channels, width))
    check_shape(op, "in_bias", in_bias, (channels,))
    hidden2d, residual2d = hidden.reshape(-1, inner), residual.reshape(-1, width)
    spatial = (h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2)

    def run(config, poison=False):
        if config["impl"] == "separate":
            x = adapter_out_triton(hidden2d, weight, bias, residual2d).view(batch, tokens, width)
            return adapter_triton(x, h, w, w_norm, w_raw, in_bias, eps, *spatial[2:])
        x, z, partials = fused_residual_adapter_in(hidden2d, weight, bias, residual2d, w_norm, w_raw, in_bias, eps,
                                                   tokens, config, poison)
        return adapter_spatial_out_triton(z.view(batch, tokens, channels), *spatial, x.view(batch, tokens, width),
                                          partials=partials)

    def verify(config):
        wrong = output_mismatch(run(config, poison=True), run(SEPARATE))
        if wrong is not None:  # its counters may be left non-zero
            reset_counters(op, residual.device, weight, batch * cdiv(tokens, config["block_m"]))
        return wrong

    rows = batch * tokens
    # Past int32 element offsets (fc2's hidden beyond ~3500 images at 224 px) only the separate ops run.
    fits = int32_offsets(hidden2d, weight, residual2d, output_elements=rows * width)
    # The fused kernel takes one storage dtype (its dot and rounding follow the residual's).
    one_dtype = len({t.dtype for t in (hidden, weight, residual, w_norm, w_raw)}) == 1
    if rows == 0 or not fits or not one_dtype:
        return run(SEPARATE)
    key = (batch, tokens, inner, width, channels, residual.dtype, spectral is not None)
    return run(tuned_config(op, key, candidates(rows), run, residual.device, tuning,
                            check_impl(op, "fused", "separate", ("block_d",)), verify), poison)


def _residual_adapter_fake(hidden, weight, bias, residual, h, w, w_norm, w_raw, in_bias, eps, spectral, k3, k5, k7,
                           conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2):
    return torch.empty_like(residual, memory_format=torch.contiguous_format)


@register_op("residual_adapter", cuda=residual_adapter_triton, fake=_residual_adapter_fake)
def residual_adapter(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, h: int,
                     w: int, w_norm: torch.Tensor, w_raw: torch.Tensor, in_bias: torch.Tensor, eps: float,
                     spectral: Optional[torch.Tensor], k3: torch.Tensor, k5: torch.Tensor, k7: torch.Tensor,
                     conv_bias: torch.Tensor, noise_w1: torch.Tensor, noise_b1: torch.Tensor, noise_w2: torch.Tensor,
                     noise_b2: torch.Tensor, proj: torch.Tensor, proj_bias: torch.Tensor, w2: torch.Tensor,
                     b2: torch.Tensor) -> torch.Tensor:
    """The public op: the references on CPU; on CUDA the tuned choice of the separate ops or the fused kernels."""
    return residual_adapter_ref(hidden, weight, bias, residual, h, w, w_norm, w_raw, in_bias, eps, spectral, k3, k5,
                                k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2)
