"""`adapter_in`: LayerNorm-mix fused as the prologue of the D→r GEMM (see htkernels/README.md)."""

from __future__ import annotations

from typing import Optional

import torch

from ._registry import register_op
from ._triton import (
    cdiv,
    check_launch,
    check_rank,
    check_shape,
    dot_low,
    interpret_bf16,
    jit,
    pdl_options,
    pow2_at_least,
    round_bf16,
    tl,
    wait_for_producer,
)
from ._tune import int32_offsets, tuned_config
from .errors import KernelInputError


def adapter_in_ref(x: torch.Tensor, w_norm: torch.Tensor, w_raw: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """`z = ((x-mean)·rsqrt(var+eps)) @ w_normᵀ + x @ w_rawᵀ + bias`; x `[M,D]`, weights `[r,D]`, bias `[r]`."""
    xf = x.float()
    mean = xf.mean(-1, keepdim=True)
    var = (xf - mean).pow(2).mean(-1, keepdim=True)
    normed = (xf - mean) * torch.rsqrt(var + eps)
    z = normed @ w_norm.float().t() + xf @ w_raw.float().t() + bias.float()
    return z.to(x.dtype)


@jit
def _adapter_in_kernel(
    x_ptr, w_norm_ptr, w_raw_ptr, bias_ptr, z_ptr,  # x [M,D], w_norm/w_raw [r,D], bias [r] → z [M,r]
    partial_ptr,  # POOL: fp32 [B, ⌈T/BLOCK_M⌉, r], each tile's sum of its image's pixel rows of z as stored
    T, D, R, eps,
    stride_xm, stride_xd, stride_nr, stride_nd, stride_rr, stride_rd, stride_zm, stride_zr,
    stride_pb, stride_pt,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, IEEE_FP32: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, SINGLE_PASS: tl.constexpr, ONE_DOT: tl.constexpr, POOL: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program: BLOCK_M rows of x, all r outputs: rows `[BLOCK_M·program_id(0), +BLOCK_M)` of the
    `T`-row group `program_id(1)` (all M rows are one group, T = M, unless POOL); the work is `adapter_in_rows`."""
    wait_for_producer(PDL)
    adapter_in_rows(x_ptr, w_norm_ptr, w_raw_ptr, bias_ptr, z_ptr, partial_ptr, tl.program_id(1), tl.program_id(0),
                    T, D, R, eps, stride_xm, stride_xd, stride_nr, stride_nd, stride_rr, stride_rd, stride_zm,
                    stride_zr, stride_pb, stride_pt, BLOCK_M, BLOCK_R, BLOCK_D, IEEE_FP32, INTERPRET_BF16,
                    SINGLE_PASS, ONE_DOT, POOL, False)


@jit
def _load_rows(ptr, mask, FRESH: tl.constexpr):
    """A tile of x; FRESH: from L2, past this SM's L1 (`.cg`), for rows other programs of the same grid wrote."""
    if FRESH:
        tile = tl.load(ptr, mask=mask, other=0.0, cache_modifier=".cg")
    else:
        tile = tl.load(ptr, mask=mask, other=0.0)
    return tile


@jit
def adapter_in_rows(
    x_ptr, w_norm_ptr, w_raw_ptr, bias_ptr, z_ptr, partial_ptr, group, tile,
    T, D, R, eps,
    stride_xm, stride_xd, stride_nr, stride_nd, stride_rr, stride_rd, stride_zm, stride_zr,
    stride_pb, stride_pt,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, IEEE_FP32: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, SINGLE_PASS: tl.constexpr, ONE_DOT: tl.constexpr, POOL: tl.constexpr,
    FRESH: tl.constexpr,
):
    """adapter_in of rows `[BLOCK_M·tile, +BLOCK_M)` of the `T`-row group `group`, all r outputs (the body of
    `_adapter_in_kernel`, and the tail of `residual_adapter`'s kernel, which reads x FRESH).

    Pass 1 over D: row means. Pass 2 over D: the centred variance and both GEMMs, `(x-mean) @ w_normᵀ` and
    `x @ w_rawᵀ`, so the normalisation is one scale of the first accumulator at the end (no normalised copy of x
    is ever stored). Centring before the GEMM avoids the cancellation of `E[x²]-E[x]²` on large-mean rows.
    fp32 inputs use exact fp32 products (`ieee`); fp16/bf16 go through the tensor cores in their own dtype
    with fp32 accumulation.

    SINGLE_PASS (a launch-configuration choice, half the serial loop): one pass over D on `s = x - x[:, 0]`
    (shifted data: the row's first value takes the offset out, so `E[s²]-E[s]²` does not cancel), accumulating
    `Σs`, `Σs²`, `s @ w_normᵀ`, `x @ w_rawᵀ` and the column sums of w_norm; then
    `LN(x) @ w_normᵀ = rstd·(s @ w_normᵀ - mean(s)·colsum(w_norm))`.

    ONE_DOT (a launch-configuration choice): both GEMMs as one dot of the centred or shifted `s = x - shift` with the
    two weight tiles side by side (`[BLOCK_D, 2·BLOCK_R]`, columns interleaved: 128 wide for r = 64), where the two
    dots above are 64 wide each; `x @ w_rawᵀ = s @ w_rawᵀ + shift·colsum(w_raw)`.

    POOL (`adapter_in_pooled`): a group is one image of T = 1 + h·w tokens, and each program also stores the
    per-channel sum of its rows of z, as stored (rounded to the storage dtype), without the CLS row (row 0): the
    partial sums of the image mean that adapter_spatial's noise estimator needs, so that it does not re-read z.
    """
    in_group = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = in_group < T
    rows = group * T + in_group
    outs = tl.arange(0, BLOCK_R)
    out_mask = outs < R

    if SINGLE_PASS:
        shift = _load_rows(x_ptr + rows * stride_xm, row_mask, FRESH).to(tl.float32)
        shifted_total = tl.zeros([BLOCK_M], dtype=tl.float32)
        colsum = tl.zeros([BLOCK_R], dtype=tl.float32)
    else:
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            mask = row_mask[:, None] & (cols < D)[None, :]
            x = _load_rows(x_ptr + rows[:, None] * stride_xm + cols[None, :] * stride_xd, mask, FRESH)
            total += tl.sum(x.to(tl.float32), axis=1)
        shift = total / D  # the mean: the loop below then accumulates centred values

    squares = tl.zeros([BLOCK_M], dtype=tl.float32)
    if ONE_DOT:
        acc_both = tl.zeros([BLOCK_M, 2 * BLOCK_R], dtype=tl.float32)
        colsum_raw = tl.zeros([BLOCK_R], dtype=tl.float32)
    else:
        acc_norm = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
        acc_raw = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_mask = cols < D
        mask = row_mask[:, None] & col_mask[None, :]
        x_raw = _load_rows(x_ptr + rows[:, None] * stride_xm + cols[None, :] * stride_xd, mask, FRESH)
        x = x_raw.to(tl.float32)
        shifted = tl.where(mask, x - shift[:, None], 0.0)
        squares += tl.sum(shifted * shifted, axis=1)
        w_mask = col_mask[:, None] & out_mask[None, :]
        w_norm = tl.load(w_norm_ptr + cols[:, None] * stride_nd + outs[None, :] * stride_nr, mask=w_mask, other=0.0)
        w_raw = tl.load(w_raw_ptr + cols[:, None] * stride_rd + outs[None, :] * stride_rr, mask=w_mask, other=0.0)
        if ONE_DOT:
            both = tl.reshape(tl.join(w_norm, w_raw), [BLOCK_D, 2 * BLOCK_R])
            if IEEE_FP32:
                acc_both += tl.dot(shifted, both.to(tl.float32), input_precision="ieee")
            else:
                acc_both += dot_low(shifted.to(x_raw.dtype), both.to(x_raw.dtype), INTERPRET_BF16)
            colsum_raw += tl.sum(w_raw.to(tl.float32), axis=0)
        elif IEEE_FP32:
            w_norm = w_norm.to(tl.float32)
            acc_norm += tl.dot(shifted, w_norm, input_precision="ieee")
            acc_raw += tl.dot(x, w_raw.to(tl.float32), input_precision="ieee")
        else:
            low = x_raw.dtype
            w_norm = w_norm.to(low)
            acc_norm += dot_low(shifted.to(low), w_norm, INTERPRET_BF16)
            acc_raw += dot_low(x_raw, w_raw.to(low), INTERPRET_BF16)
        if SINGLE_PASS:
            shifted_total += tl.sum(shifted, axis=1)
            colsum += tl.sum(w_norm.to(tl.float32), axis=0)
    if ONE_DOT:
        acc_norm, acc_raw = tl.split(tl.reshape(acc_both, [BLOCK_M, BLOCK_R, 2]))
        acc_raw = acc_raw + shift[:, None] * colsum_raw[None, :]
    if SINGLE_PASS:
        shifted_mean = shifted_total / D
        rstd = 1.0 / tl.sqrt(tl.maximum(squares / D - shifted_mean * shifted_mean, 0.0) + eps)
        acc_norm = acc_norm - shifted_mean[:, None] * colsum[None, :]
    else:
        rstd = 1.0 / tl.sqrt(squares / D + eps)
    bias = tl.load(bias_ptr + outs, mask=out_mask, other=0.0).to(tl.float32)
    z = acc_norm * rstd[:, None] + acc_raw + bias[None, :]
    z = round_bf16(z, INTERPRET_BF16).to(z_ptr.dtype.element_ty)
    tl.store(z_ptr + rows[:, None] * stride_zm + outs[None, :] * stride_zr, z,
             mask=row_mask[:, None] & out_mask[None, :])
    if POOL:
        pixel_rows = row_mask & (in_group > 0)
        partial = tl.sum(tl.where(pixel_rows[:, None], z.to(tl.float32), 0.0), axis=0)
        tl.store(partial_ptr + group * stride_pb + tile * stride_pt + outs, partial, mask=out_mask)


def tuning_candidates(rows: int) -> list:
    """Launch configurations the tuner (`htkernels._tune`) times for `rows` rows; the first is the default.

    8-row tiles at batch 1-2 (197-394 rows: 25-50 programs; 8.2 µs vs 9.4 µs for 16 rows on an H100, bf16,
    benchmarks/results/gpu-h100-2026-11-27), 16 up to 4096 rows, 64 beyond; each with and without the single pass,
    and the first two shapes also as one 2r-wide dot (`one_dot`, not yet measured on a GPU: the tuner keeps it only
    where it times faster)."""
    if rows <= 512:
        shapes = [(8, 64, 4), (16, 64, 4), (8, 64, 2), (8, 128, 4)]
    elif rows <= 4096:
        shapes = [(16, 64, 4), (32, 64, 4), (16, 128, 4)]
    else:
        shapes = [(64, 64, 4), (32, 64, 4), (64, 64, 8), (128, 64, 8)]
    return [dict(block_m=m, block_d=d, num_warps=w, single_pass=single, one_dot=one_dot)
            for one_dot, tiles in ((False, shapes), (True, shapes[:2]))
            for single in (False, True) for m, d, w in tiles]


def adapter_in_triton(x: torch.Tensor, w_norm: torch.Tensor, w_raw: torch.Tensor, bias: torch.Tensor,
                      eps: float, tuning: Optional[dict] = None) -> torch.Tensor:
    """Launcher of `_adapter_in_kernel`: checks, output allocation, grid. Any strides; output contiguous.

    The launch configuration (`block_m`, `block_d`, `num_warps`, `single_pass`, `one_dot`) is the tuner's choice
    among `tuning_candidates` on a GPU; `tuning` overrides keys of the default instead (benchmarks/gpu_check.py)."""
    return _launch("adapter_in", x, w_norm, w_raw, bias, eps, None, tuning)[0]


def pooled_candidates(batch: int, tokens: int) -> list:
    """Launch configurations of `adapter_in_pooled` for `batch` images of `tokens` rows: those of adapter_in for
    `batch·tokens` rows in their first two tile shapes not taller than an image (each image is tiled on its own,
    so taller tiles would only compute masked rows), each with and without the single pass and the one dot."""
    configs = tuning_candidates(batch * tokens)
    shapes = [(c["block_m"], c["block_d"], c["num_warps"]) for c in configs if c["block_m"] <= max(tokens, 8)]
    kept = [c for c in configs if (c["block_m"], c["block_d"], c["num_warps"]) in shapes[:2]]
    return kept or [dict(configs[0], block_m=8)]


def adapter_in_pooled_triton(x: torch.Tensor, w_norm: torch.Tensor, w_raw: torch.Tensor, bias: torch.Tensor,
                             eps: float, tokens: int, tuning: Optional[dict] = None):
    """`adapter_in` on x `[B·tokens, D]` (B images of `tokens` rows, the CLS row first) → `(z [B·tokens, r],
    partials fp32 [B, P, r])`: `partials[b].sum(0)` is the per-channel sum of image b's pixel rows of z as stored
    (rows 1..tokens-1; P = ⌈tokens/block_m⌉ tiles per image). The launches tile each image on its own (the tuner's
    choice among `pooled_candidates`), so no tile mixes two images."""
    if tokens < 1 or x.dim() != 2 or x.shape[0] % tokens:
        raise KernelInputError(f"htkernels::adapter_in_pooled: x has shape {tuple(x.shape)}; expected [B*{tokens}, D] "
                               f"(B images of {tokens} rows)")
    return _launch("adapter_in_pooled", x, w_norm, w_raw, bias, eps, tokens, tuning)


def _launch(op: str, x, w_norm, w_raw, bias, eps, tokens: Optional[int], tuning: Optional[dict]):
    """`(z, partials)` of one adapter_in launch; `tokens` None: one group of all rows, no partials (None)."""
    check_launch(op, dict(x=x, w_norm=w_norm, w_raw=w_raw, bias=bias))
    check_rank(op, "x", x, "[M, D]")
    rows, width = x.shape
    channels = w_norm.shape[0]
    check_shape(op, "w_norm", w_norm, (channels, width))
    check_shape(op, "w_raw", w_raw, (channels, width))
    check_shape(op, "bias", bias, (channels,))
    pooled = tokens is not None
    group, groups = (tokens, rows // tokens) if pooled else (rows, 1)
    # Past int32 element offsets (x beyond ~14,000 images at 224 px) the reference's torch ops run, the partials
    # as one tile per image.
    if rows and not int32_offsets(x, w_norm, w_raw, output_elements=rows * channels):
        z = adapter_in_ref(x, w_norm, w_raw, bias, eps)
        return z, (z.view(groups, group, channels)[:, 1:].float().sum(1, keepdim=True) if pooled else None)
    z = torch.empty((rows, channels), device=x.device, dtype=x.dtype)
    candidates = pooled_candidates(groups, group) if pooled else tuning_candidates(rows)
    partials = []
    if rows == 0:
        return z, (torch.zeros((0, 1, channels), device=x.device) if pooled else None)
    block_r = pow2_at_least(channels)

    def launch(config):
        block_m = config["block_m"]
        tiles = cdiv(group, block_m)
        if pooled and (not partials or partials[0].shape[1] != tiles):
            partials[:] = [torch.empty((groups, tiles, channels), device=x.device, dtype=torch.float32)]
        out = partials[0] if pooled else z
        _adapter_in_kernel[(tiles, groups)](
            x, w_norm, w_raw, bias, z, out, group, width, channels, float(eps),
            x.stride(0), x.stride(1), w_norm.stride(0), w_norm.stride(1), w_raw.stride(0), w_raw.stride(1),
            z.stride(0), z.stride(1), out.stride(0) if pooled else 0, out.stride(1) if pooled else 0,
            BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_D=config["block_d"], IEEE_FP32=x.dtype == torch.float32,
            INTERPRET_BF16=interpret_bf16(x.dtype), SINGLE_PASS=bool(config["single_pass"]),
            ONE_DOT=bool(config["one_dot"]), POOL=pooled, num_warps=config["num_warps"], **pdl_options(x.device),
        )

    launch(tuned_config(op, (rows, width, channels, x.dtype, group), candidates, launch, x.device, tuning))
    return z, (partials[0] if pooled else None)


def _adapter_in_fake(x, w_norm, w_raw, bias, eps):
    return x.new_empty((x.shape[0], w_norm.shape[0]))


@register_op("adapter_in", cuda=adapter_in_triton, fake=_adapter_in_fake)
def adapter_in(x: torch.Tensor, w_norm: torch.Tensor, w_raw: torch.Tensor, bias: torch.Tensor,
               eps: float) -> torch.Tensor:
    """The public op: the reference on CPU, the Triton kernel on CUDA."""
    return adapter_in_ref(x, w_norm, w_raw, bias, eps)
