"""`adapter_spatial`: the whole spatial part of the HT adapter per image (see htkernels/README.md)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._cache import WeightsCache
from ._registry import register_op
from ._triton import (
    cdiv,
    check_launch,
    check_rank,
    check_shape,
    dot_low,
    gelu_erf,
    interpret_bf16,
    jit,
    pdl_options,
    pow2_at_least,
    round_bf16,
    tl,
    wait_for_producer,
)
from ._tune import int32_offsets, tuned_config
from .adapter_out import adapter_out_ref, adapter_out_triton
from .errors import KernelInputError

# ViT-L/14 at 336 px has a 24×24 grid; 32×32 leaves room (the grid sets only loop bounds, not tile sizes).
MAX_GRID = 32
# Below this many 32-pixel tiles (about the SM count of an H100) a launch leaves SMs idle: halve the tiles instead.
SMALL_LAUNCH_PROGRAMS = 128


def adapter_spatial_ref(z, h: int, w: int, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2,
                        proj, proj_bias) -> torch.Tensor:
    """z `[B,1+h·w,r]` → `g [B,1+h·w,r]`: filter, noise weights, 3 depthwise convs + residual, `(I+P)`, GELU."""
    batch, tokens, channels = z.shape
    if tokens != 1 + h * w:
        raise ValueError(f"adapter_spatial: z has {tokens} tokens, expected 1 + {h}*{w} = {1 + h * w}")
    zf = z.float()
    s = zf[:, 1:].transpose(1, 2).reshape(batch, channels, h, w)
    if spectral is None:
        filtered = s
    else:
        phi = torch.view_as_complex(spectral.float().contiguous())
        filtered = torch.fft.irfft2(torch.fft.rfft2(s) * phi, s=(h, w))
    pooled = filtered.mean(dim=(2, 3))
    hidden = F.relu(pooled @ noise_w1.float().t() + noise_b1.float())
    alpha = torch.softmax(hidden @ noise_w2.float().t() + noise_b2.float(), dim=-1)
    t = s.clone()
    for index, kernel in enumerate((k3, k5, k7)):
        size = kernel.shape[-1]
        conv = F.conv2d(filtered, kernel.float().reshape(channels, 1, size, size), conv_bias[index].float(),
                        padding=size // 2, groups=channels)
        t = t + alpha[:, index, None, None, None] * conv
    o = torch.einsum("oc,bchw->bohw", proj.float(), t) + proj_bias.float()[None, :, None, None]
    spatial = o.reshape(batch, channels, h * w).transpose(1, 2)
    return F.gelu(torch.cat([zf[:, :1], spatial], dim=1)).to(z.dtype)


@jit
def _pixel_sum(f_image, ps, stride_fp, channel_mask, hw):
    """Per channel, the fp32 sum of F over the pixels `ps` (those past `hw` count as 0)."""
    f = tl.load(f_image + ps[None, :] * stride_fp, mask=channel_mask[:, None] & (ps < hw)[None, :], other=0.0)
    return tl.sum(f.to(tl.float32), axis=1)


@jit
def _circular_filter_kernel(
    z_ptr, kappa_ptr, f_ptr,  # z [B,1+h·w,r], kappa fp32 [r,h,w] → f fp32 [B,r,h·w]
    H, W, R,
    stride_zb, stride_zn, stride_zr, stride_fb, stride_fr, stride_fp,
    BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, PDL: tl.constexpr,
):
    """Spectral filter of one image, BLOCK_P pixels × all r channels: `F_c = S_c ⊛ κ_c` (circular).

    `irfft2(rfft2(S) ⊙ φ, s=(h,w))` is linear and shift-invariant in S with a real impulse response, so it is
    exactly the circular convolution with `κ = irfft2(φ, s=(h,w))` (the C2R transform drops the imaginary
    parts of the self-conjugate bins for S and for κ alike). No FFT, no complex numbers on the device.
    """
    wait_for_producer(PDL)
    image = tl.program_id(0)
    pixels = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    channels = tl.arange(0, BLOCK_R)
    hw = H * W
    pixel_mask = pixels < hw
    channel_mask = channels < R
    mask = channel_mask[:, None] & pixel_mask[None, :]
    py = pixels // W
    px = pixels % W
    acc = tl.zeros([BLOCK_R, BLOCK_P], dtype=tl.float32)
    for q in range(0, hw):
        qy = q // W
        qx = q - qy * W
        s = tl.load(z_ptr + image * stride_zb + (1 + q) * stride_zn + channels * stride_zr, mask=channel_mask,
                    other=0.0).to(tl.float32)
        taps = ((py - qy + H) % H) * W + (px - qx + W) % W
        kappa = tl.load(kappa_ptr + channels[:, None] * hw + taps[None, :], mask=mask, other=0.0)
        acc += kappa * s[:, None]
    tl.store(f_ptr + image * stride_fb + channels[:, None] * stride_fr + pixels[None, :] * stride_fp, acc, mask=mask)


@jit
def _noise_weights(f_image, stride_fp, channels, channel_mask, hw, noise_w1_ptr, noise_b1_ptr, noise_w2_ptr,
                   noise_b2_ptr, R, R4, partial_image, partial_tiles, stride_pt, kappa_sum_ptr,
                   BLOCK_R: tl.constexpr, BLOCK_R4: tl.constexpr, BLOCK_P: tl.constexpr,
                   POOL_CHUNKS: tl.constexpr, BLOCK_POOL: tl.constexpr, POOLED: tl.constexpr, SCALED: tl.constexpr):
    """`α = softmax(W_b relu(W_a mean_hw(F) + b_a) + b_b)` of one image: its three scalars.

    The image mean is a reduction streamed through registers, in a runtime loop of BLOCK_P-pixel steps, or (a
    launch-configuration choice, POOL_CHUNKS > 0) in unrolled BLOCK_POOL-pixel chunks whose loads are all
    independent and can be in flight at once.
    POOLED: the sum of S over the pixels comes as `partial_tiles` partial sums (adapter_in's epilogue,
    `adapter_in_pooled`) and F's is that times `Σκ` per channel (SCALED, the spectral filter: the circular
    convolution of S with κ sums to `Σ S · Σ κ`), so F is not re-read."""
    total = tl.zeros([BLOCK_R], dtype=tl.float32)
    if POOLED:
        for tile in range(0, partial_tiles):
            total += tl.load(partial_image + tile * stride_pt + channels, mask=channel_mask, other=0.0)
        if SCALED:
            total *= tl.load(kappa_sum_ptr + channels, mask=channel_mask, other=0.0)
    elif POOL_CHUNKS > 0:
        for chunk in tl.static_range(POOL_CHUNKS):
            total += _pixel_sum(f_image, chunk * BLOCK_POOL + tl.arange(0, BLOCK_POOL), stride_fp, channel_mask, hw)
    else:
        for p0 in range(0, hw, BLOCK_P):
            total += _pixel_sum(f_image, p0 + tl.arange(0, BLOCK_P), stride_fp, channel_mask, hw)
    pooled = total / hw

    hidden_index = tl.arange(0, BLOCK_R4)
    hidden_mask = hidden_index < R4
    w1 = tl.load(noise_w1_ptr + hidden_index[:, None] * R + channels[None, :],
                 mask=hidden_mask[:, None] & channel_mask[None, :], other=0.0).to(tl.float32)
    hidden = tl.sum(w1 * pooled[None, :], axis=1)
    hidden += tl.load(noise_b1_ptr + hidden_index, mask=hidden_mask, other=0.0).to(tl.float32)
    hidden = tl.where(hidden_mask, tl.maximum(hidden, 0.0), 0.0)
    logit0 = tl.sum(tl.load(noise_w2_ptr + hidden_index, mask=hidden_mask, other=0.0).to(tl.float32) * hidden)
    logit1 = tl.sum(tl.load(noise_w2_ptr + R4 + hidden_index, mask=hidden_mask, other=0.0).to(tl.float32) * hidden)
    logit2 = tl.sum(tl.load(noise_w2_ptr + 2 * R4 + hidden_index, mask=hidden_mask, other=0.0).to(tl.float32)
                    * hidden)
    logit0 += tl.load(noise_b2_ptr).to(tl.float32)
    logit1 += tl.load(noise_b2_ptr + 1).to(tl.float32)
    logit2 += tl.load(noise_b2_ptr + 2).to(tl.float32)
    top = tl.maximum(tl.maximum(logit0, logit1), logit2)
    e0 = tl.exp(logit0 - top)
    e1 = tl.exp(logit1 - top)
    e2 = tl.exp(logit2 - top)
    norm = e0 + e1 + e2
    return e0 / norm, e1 / norm, e2 / norm


@jit
def _combined_bias(conv_bias_ptr, channels, channel_mask, R, alpha0, alpha1, alpha2):
    """`Σ_k α_k conv_bias[k]` per channel."""
    return (alpha0 * tl.load(conv_bias_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32)
            + alpha1 * tl.load(conv_bias_ptr + R + channels, mask=channel_mask, other=0.0).to(tl.float32)
            + alpha2 * tl.load(conv_bias_ptr + 2 * R + channels, mask=channel_mask, other=0.0).to(tl.float32))


@jit
def _adapter_spatial_kernel(
    z_ptr, f_ptr, g_ptr,  # z [B,1+h·w,r]; f: the filtered image, [B,r,h·w] by strides (z itself without filter)
    k3_ptr, k5_ptr, k7_ptr, conv_bias_ptr,  # [r,3,3], [r,5,5], [r,7,7], [3,r] (all contiguous)
    noise_w1_ptr, noise_b1_ptr, noise_w2_ptr, noise_b2_ptr,  # [r/4,r], [r/4], [3,r/4], [3] (contiguous)
    proj_ptr, proj_bias_ptr,  # [r,r], [r] (contiguous)
    w2_ptr, b2_ptr, res_ptr, y_ptr,  # FUSE_OUT: adapter_out's w2 [D,r], b2 [D], residual x and y [B,1+h·w,D]
    partial_ptr, kappa_sum_ptr,  # POOLED: fp32 [B, P, r] partial pixel sums of S; SCALED: Σκ fp32 [r]
    H, W, R, R4, D, partial_tiles,
    stride_zb, stride_zn, stride_zr, stride_fb, stride_fr, stride_fp, stride_gb, stride_gn, stride_gr,
    stride_w2d, stride_w2r, stride_rb, stride_rn, stride_rd, stride_yb, stride_yn, stride_yd, stride_pb, stride_pt,
    BLOCK_R: tl.constexpr, BLOCK_R4: tl.constexpr, BLOCK_P: tl.constexpr, IEEE_FP32: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, POOL_CHUNKS: tl.constexpr, BLOCK_POOL: tl.constexpr, SPLIT_CONV: tl.constexpr,
    FUSE_OUT: tl.constexpr, BLOCK_N: tl.constexpr, POOLED: tl.constexpr, SCALED: tl.constexpr, PDL: tl.constexpr,
):
    """One program: image `program_id(0)`, pixels `[BLOCK_P·program_id(1), +BLOCK_P)`, all r channels.

    1. `α` of the image (`_noise_weights`; each tile recomputes the image mean, which is cheaper than a second
       launch at the sizes of the model, or, POOLED, sums adapter_in's partial sums of it).
    2. `T = Σ_k α_k (DW_k(F) + bias_k) + S` as one dynamic 7×7 depthwise kernel `Σ α_k pad(K_k)` applied to
       the tile, its taps read from F (cached) with zero padding at the image border.
       SPLIT_CONV (a launch-configuration choice): the three convolutions accumulate separately and α weighs
       them after the tap loop, so the 49 tap loads do not wait for the image mean (nothing in the tap loop
       depends on α); 83 instead of 49 tile FMAs.
    3. `O = proj · T + proj_bias` on the tile (r×r GEMM, tensor cores for fp16/bf16), then GELU(erf), stored
       transposed back to token-major `g[b, 1+p, c]`. Tile 0 also writes the CLS token `GELU(z[b,0])`.
       FUSE_OUT (a launch-configuration choice of `adapter_spatial_out`): g is not stored; the tile's rows go
       through adapter_out instead, `y = x + g·w2ᵀ + b2` in BLOCK_N-column steps over D (`_out_rows`), g rounded
       to the storage dtype first as the stored g would be; tile 0 does the same for the CLS row.
    """
    wait_for_producer(PDL)
    image = tl.program_id(0)
    tile = tl.program_id(1)
    hw = H * W
    channels = tl.arange(0, BLOCK_R)
    channel_mask = channels < R
    f_image = f_ptr + image * stride_fb + channels[:, None] * stride_fr
    partial_image = partial_ptr + image * stride_pb

    pixels = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = pixels < hw
    mask = channel_mask[:, None] & pixel_mask[None, :]
    py = pixels // W
    px = pixels % W
    z_image = z_ptr + image * stride_zb
    t = tl.load(z_image + (1 + pixels[None, :]) * stride_zn + channels[:, None] * stride_zr, mask=mask,
                other=0.0).to(tl.float32)
    if SPLIT_CONV:
        acc3 = tl.zeros([BLOCK_R, BLOCK_P], dtype=tl.float32)
        acc5 = tl.zeros([BLOCK_R, BLOCK_P], dtype=tl.float32)
        acc7 = tl.zeros([BLOCK_R, BLOCK_P], dtype=tl.float32)
    else:
        alpha0, alpha1, alpha2 = _noise_weights(f_image, stride_fp, channels, channel_mask, hw, noise_w1_ptr,
                                                noise_b1_ptr, noise_w2_ptr, noise_b2_ptr, R, R4, partial_image,
                                                partial_tiles, stride_pt, kappa_sum_ptr, BLOCK_R, BLOCK_R4, BLOCK_P,
                                                POOL_CHUNKS, BLOCK_POOL, POOLED, SCALED)
        t += _combined_bias(conv_bias_ptr, channels, channel_mask, R, alpha0, alpha1, alpha2)[:, None]
    for dy in tl.static_range(7):
        for dx in tl.static_range(7):
            ys = py + (dy - 3)
            xs = px + (dx - 3)
            inside = pixel_mask & (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
            f = tl.load(f_image + (ys * W + xs)[None, :] * stride_fp, mask=channel_mask[:, None] & inside[None, :],
                        other=0.0).to(tl.float32)
            weight = tl.load(k7_ptr + channels * 49 + (dy * 7 + dx), mask=channel_mask, other=0.0).to(tl.float32)
            if SPLIT_CONV:
                acc7 += weight[:, None] * f
            else:
                weight = alpha2 * weight
            if dy >= 1:
                if dy <= 5:
                    if dx >= 1:
                        if dx <= 5:
                            w5 = tl.load(k5_ptr + channels * 25 + ((dy - 1) * 5 + dx - 1), mask=channel_mask,
                                         other=0.0).to(tl.float32)
                            if SPLIT_CONV:
                                acc5 += w5[:, None] * f
                            else:
                                weight += alpha1 * w5
            if dy >= 2:
                if dy <= 4:
                    if dx >= 2:
                        if dx <= 4:
                            w3 = tl.load(k3_ptr + channels * 9 + ((dy - 2) * 3 + dx - 2), mask=channel_mask,
                                         other=0.0).to(tl.float32)
                            if SPLIT_CONV:
                                acc3 += w3[:, None] * f
                            else:
                                weight += alpha0 * w3
            if not SPLIT_CONV:
                t += weight[:, None] * f
    if SPLIT_CONV:
        alpha0, alpha1, alpha2 = _noise_weights(f_image, stride_fp, channels, channel_mask, hw, noise_w1_ptr,
                                                noise_b1_ptr, noise_w2_ptr, noise_b2_ptr, R, R4, partial_image,
                                                partial_tiles, stride_pt, kappa_sum_ptr, BLOCK_R, BLOCK_R4, BLOCK_P,
                                                POOL_CHUNKS, BLOCK_POOL, POOLED, SCALED)
        bias = _combined_bias(conv_bias_ptr, channels, channel_mask, R, alpha0, alpha1, alpha2)
        t += alpha0 * acc3 + alpha1 * acc5 + alpha2 * acc7 + bias[:, None]

    outs = tl.arange(0, BLOCK_R)
    proj = tl.load(proj_ptr + outs[:, None] * R + channels[None, :],
                   mask=(outs < R)[:, None] & channel_mask[None, :], other=0.0)
    if IEEE_FP32:
        o = tl.dot(proj.to(tl.float32), t, input_precision="ieee")
    else:
        low = g_ptr.dtype.element_ty
        o = dot_low(proj.to(low), t.to(low), INTERPRET_BF16)
    o += tl.load(proj_bias_ptr + outs, mask=outs < R, other=0.0).to(tl.float32)[:, None]
    g_tile = round_bf16(gelu_erf(o), INTERPRET_BF16).to(g_ptr.dtype.element_ty)
    if FUSE_OUT:
        _out_rows(tl.trans(g_tile), 1 + pixels, pixel_mask, image, channels, channel_mask, w2_ptr, b2_ptr, res_ptr,
                  y_ptr, D, stride_w2d, stride_w2r, stride_rb, stride_rn, stride_rd, stride_yb, stride_yn, stride_yd,
                  BLOCK_N, IEEE_FP32, INTERPRET_BF16)
    else:
        g_image = g_ptr + image * stride_gb
        tl.store(g_image + (1 + pixels[None, :]) * stride_gn + outs[:, None] * stride_gr, g_tile, mask=mask)
    if tile == 0:
        cls = tl.load(z_image + channels * stride_zr, mask=channel_mask, other=0.0).to(tl.float32)
        cls = round_bf16(gelu_erf(cls), INTERPRET_BF16).to(g_ptr.dtype.element_ty)
        if FUSE_OUT:
            # The CLS row as row 0 of a BLOCK_P-row tile (a dot needs ≥ 16 rows); the other rows are masked off.
            first = tl.arange(0, BLOCK_P) == 0
            cls_rows = tl.where(first[:, None], tl.broadcast_to(cls[None, :], (BLOCK_P, BLOCK_R)), 0.0)
            _out_rows(cls_rows.to(g_ptr.dtype.element_ty), tl.zeros([BLOCK_P], dtype=tl.int32), first, image,
                      channels, channel_mask, w2_ptr, b2_ptr, res_ptr, y_ptr, D, stride_w2d, stride_w2r, stride_rb,
                      stride_rn, stride_rd, stride_yb, stride_yn, stride_yd, BLOCK_N, IEEE_FP32, INTERPRET_BF16)
        else:
            tl.store(g_ptr + image * stride_gb + channels * stride_gr, cls, mask=channel_mask)


@jit
def _out_rows(g_rows, tokens, row_mask, image, channels, channel_mask, w2_ptr, b2_ptr, res_ptr, y_ptr, D,
              stride_w2d, stride_w2r, stride_rb, stride_rn, stride_rd, stride_yb, stride_yn, stride_yd,
              BLOCK_N: tl.constexpr, IEEE_FP32: tl.constexpr, INTERPRET_BF16: tl.constexpr):
    """adapter_out on rows of one image: `y[image, tokens] = x[image, tokens] + g_rows·w2ᵀ + b2`, g_rows `[rows, r]`
    in the storage dtype, fp32 accumulation (exact products for fp32, tensor cores for fp16/bf16), one rounding."""
    res_rows = res_ptr + image * stride_rb + tokens[:, None] * stride_rn
    y_rows = y_ptr + image * stride_yb + tokens[:, None] * stride_yn
    for n0 in range(0, D, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < D
        w2 = tl.load(w2_ptr + cols[None, :] * stride_w2d + channels[:, None] * stride_w2r,
                     mask=channel_mask[:, None] & col_mask[None, :], other=0.0)
        if IEEE_FP32:
            acc = tl.dot(g_rows.to(tl.float32), w2.to(tl.float32), input_precision="ieee")
        else:
            acc = dot_low(g_rows, w2.to(g_rows.dtype), INTERPRET_BF16)
        mask = row_mask[:, None] & col_mask[None, :]
        acc += tl.load(b2_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        acc += tl.load(res_rows + cols[None, :] * stride_rd, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_rows + cols[None, :] * stride_yd, round_bf16(acc, INTERPRET_BF16).to(y_ptr.dtype.element_ty),
                 mask=mask)


def impulse_response(spectral: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`κ = irfft2(φ, s=(h,w))` fp32 `[r,h,w]` of a spectral filter `[r,h,w//2+1,2]`: what `_circular_filter_kernel`
    convolves with. Weights only, so launches take it from `IMPULSE_RESPONSES` (computed once per filter tensor)."""
    return torch.fft.irfft2(torch.view_as_complex(spectral.float().contiguous()), s=(h, w)).contiguous()


# κ per spectral filter tensor, recomputed only when the filter changes (htkernels._cache).
IMPULSE_RESPONSES = WeightsCache(impulse_response)
# Σκ per channel (fp32 [r]), for the image mean of F from adapter_in's partial sums of S (POOLED): the DC bin of
# rfft2(κ), which the C2R transform that makes κ keeps as the real part of φ's DC bin, so Σκ = Re φ[:, 0, 0].
IMPULSE_SUMS = WeightsCache(lambda spectral: spectral[:, 0, 0, 0].float().contiguous())


def tuning_candidates(batch: int, h: int, w: int, channels: int, pooled: bool = False) -> list:
    """Launch configurations the tuner (`htkernels._tune`) times for this shape; the first is the default.

    Default: 32-pixel tiles when the launch has at least SMALL_LAUNCH_PROGRAMS of them (and r ≤ 64), else 16 (at
    batch 1 on an H100, bf16: 17.0 µs, against 17.9 for 8-pixel and 23.0 for 32-pixel tiles, 20.4-22.2 for 2 or
    8 warps; benchmarks/results/gpu-h100-2026-11-27), the image mean in a runtime loop, one conv accumulator.
    The others add the unrolled image mean (`pool_block`) and the split convolution (`split_conv`). `pooled`: the
    image mean comes from adapter_in's partial sums, so the configurations that differ only in `pool_block` are
    one (`pool_block=0`)."""
    wide = pow2_at_least(channels) <= 64 and batch * cdiv(h * w, 32) >= SMALL_LAUNCH_PROGRAMS
    block_p = 32 if wide else 16
    pool = min(64, pow2_at_least(h * w))
    configs = [dict(block_p=block_p, num_warps=4, pool_block=0, split_conv=False)]
    for pool_block, split in ((pool, False), (0, True), (pool, True)):
        configs.append(dict(block_p=block_p, num_warps=4, pool_block=pool_block, split_conv=split))
    other = 16 if wide else 8
    configs += [dict(block_p=other, num_warps=4, pool_block=pool, split_conv=False),
                dict(block_p=other, num_warps=4, pool_block=pool, split_conv=True),
                dict(block_p=block_p, num_warps=8, pool_block=pool, split_conv=True)]
    if pooled:
        unique = []
        for config in configs:
            if dict(config, pool_block=0) not in unique:
                unique.append(dict(config, pool_block=0))
        return unique
    return configs


def _check_tuning(h: int, w: int):
    def validate(config):
        pool_block = config["pool_block"]
        if pool_block and (pool_block & (pool_block - 1) or cdiv(h * w, pool_block) > 64):
            raise KernelInputError(f"htkernels::adapter_spatial: tuning pool_block={pool_block} must be a power of two "
                             f"with at most 64 chunks over the {h}x{w} grid (0: the runtime loop)")
    return validate


def adapter_spatial_triton(z, h: int, w: int, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2,
                           noise_b2, proj, proj_bias, tuning: Optional[dict] = None,
                           partials: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Launcher: checks, the spectral impulse response (when a spectral filter is given: computed once per filter
    tensor and reused while it is unchanged, `IMPULSE_RESPONSES`), grid. `z` any strides.

    The launch configuration (`block_p`, `num_warps`, `pool_block`: 0 reduces the image mean in a runtime loop of
    `block_p`-pixel steps, N in ⌈h·w/N⌉ unrolled N-pixel chunks; `split_conv`) is the tuner's choice among
    `tuning_candidates` on a GPU; `tuning` overrides keys of the default instead. `partials` (fp32 `[B, P, r]`,
    `adapter_in_pooled`'s): the image mean from their sums instead of a reduction over the image (`pool_block` then
    does not apply)."""
    op = "adapter_spatial"
    launch = _SpatialLaunch(op, z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2,
                            proj, proj_bias, partials)
    g = torch.empty(z.shape, device=z.device, dtype=z.dtype)
    if z.shape[0]:
        launch(tuned_config(op, launch.key, tuning_candidates(*launch.shape, pooled=partials is not None),
                            lambda config: launch(config, g), z.device, tuning, _check_tuning(h, w)), g)
    return g


class _SpatialLaunch:
    """The checked arguments of one `adapter_spatial` or `adapter_spatial_out` call and its launches: `(config, g)`
    stores g, `(config, y, out=(w2, b2, residual))` applies adapter_out in the epilogue and stores y instead."""

    def __init__(self, op, z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                 proj_bias, partials=None):
        check_launch(op, dict(z=z, spectral=spectral, k3=k3, k5=k5, k7=k7, conv_bias=conv_bias, noise_w1=noise_w1,
                              noise_b1=noise_b1, noise_w2=noise_w2, noise_b2=noise_b2, proj=proj,
                              proj_bias=proj_bias))
        check_rank(op, "z", z, "[B, N, r]")
        batch, tokens, channels = z.shape
        if not (1 <= h <= MAX_GRID and 1 <= w <= MAX_GRID):
            raise KernelInputError(f"htkernels::{op}: grid {h}x{w} is outside the supported 1..{MAX_GRID} per side")
        if tokens != 1 + h * w:
            raise KernelInputError(f"htkernels::{op}: z has {tokens} tokens, expected 1 + {h}*{w} = {1 + h * w}")
        reduced = noise_w1.shape[0]
        for name, tensor, shape in (("k3", k3, (channels, 3, 3)), ("k5", k5, (channels, 5, 5)),
                                    ("k7", k7, (channels, 7, 7)), ("conv_bias", conv_bias, (3, channels)),
                                    ("noise_w1", noise_w1, (reduced, channels)), ("noise_b1", noise_b1, (reduced,)),
                                    ("noise_w2", noise_w2, (3, reduced)), ("noise_b2", noise_b2, (3,)),
                                    ("proj", proj, (channels, channels)), ("proj_bias", proj_bias, (channels,))):
            check_shape(op, name, tensor, shape)
        if spectral is not None:
            check_shape(op, "spectral", spectral, (channels, h, w // 2 + 1, 2))
        if partials is not None:
            check_launch(op, dict(z=z, partials=partials))
            if partials.dtype != torch.float32 or partials.dim() != 3 or partials.shape[0] != batch \
                    or partials.shape[1] < 1 or partials.shape[2] != channels or partials.stride(2) != 1:
                raise KernelInputError(f"htkernels::{op}: partials is {partials.dtype} {tuple(partials.shape)}; "
                                       f"expected float32 [{batch}, P ≥ 1, {channels}] with contiguous channels")
        self.z, self.h, self.w, self.reduced, self.partials = z, h, w, reduced, partials
        self.shape = (batch, h, w, channels)
        self.key = (batch, h, w, channels, z.dtype, spectral is not None, partials is not None)
        self.weights = [t.contiguous() for t in (k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                                                 proj_bias)]
        self.block_r = pow2_at_least(channels)
        if spectral is None or batch == 0:
            self.filtered = z[:, 1:].transpose(1, 2)  # [B, r, h·w] view of S: F = S
            self.kappa = None
        else:
            self.kappa = IMPULSE_RESPONSES.get((spectral,), h, w)
            self.filtered = torch.empty((batch, channels, h * w), device=z.device, dtype=torch.float32)
        self.kappa_sum = IMPULSE_SUMS.get((spectral,)) if partials is not None and self.kappa is not None else None

    def __call__(self, config, into, out=None):
        z, h, w, filtered = self.z, self.h, self.w, self.filtered
        batch, channels = z.shape[0], z.shape[2]
        block_p, pool_block = config["block_p"], config["pool_block"]
        tiles = cdiv(h * w, block_p)
        if self.kappa is not None:
            _circular_filter_kernel[(batch, tiles)](
                z, self.kappa, filtered, h, w, channels,
                z.stride(0), z.stride(1), z.stride(2), filtered.stride(0), filtered.stride(1), filtered.stride(2),
                BLOCK_R=self.block_r, BLOCK_P=block_p, num_warps=4, **pdl_options(z.device),
            )
        if out is None:  # into is g; the adapter_out arguments are unused placeholders
            w2, b2, residual, y, width = z, z, z, z, 0
            g_strides, out_strides = into.stride(), (0,) * 8
        else:
            (w2, b2, residual), y, width = out, into, out[0].shape[0]
            g_strides = (0, 0, 0)
            out_strides = w2.stride() + residual.stride() + y.stride()
        partials = z if self.partials is None else self.partials
        kappa_sum = z if self.kappa_sum is None else self.kappa_sum
        _adapter_spatial_kernel[(batch, tiles)](
            z, filtered, into, *self.weights, w2, b2, residual, y, partials, kappa_sum, h, w, channels, self.reduced,
            width, partials.shape[1] if self.partials is not None else 0,
            z.stride(0), z.stride(1), z.stride(2), filtered.stride(0), filtered.stride(1), filtered.stride(2),
            *g_strides, *out_strides, *(partials.stride()[:2] if self.partials is not None else (0, 0)),
            BLOCK_R=self.block_r, BLOCK_R4=pow2_at_least(self.reduced, floor=2), BLOCK_P=block_p,
            IEEE_FP32=z.dtype == torch.float32, INTERPRET_BF16=interpret_bf16(z.dtype), num_warps=config["num_warps"],
            POOL_CHUNKS=cdiv(h * w, pool_block) if pool_block else 0, BLOCK_POOL=pool_block or block_p,
            SPLIT_CONV=bool(config["split_conv"]), FUSE_OUT=out is not None, BLOCK_N=config.get("block_n", 64),
            POOLED=self.partials is not None, SCALED=self.kappa_sum is not None, **pdl_options(z.device),
        )


def spatial_out_candidates(batch: int, h: int, w: int, channels: int, pooled: bool = False) -> list:
    """Launch configurations of `adapter_spatial_out` for the tuner; the first is the default: `adapter_spatial`
    then `adapter_out`, each with its own tuned launch (`impl="separate"`). The others run adapter_out in the
    spatial kernel's epilogue (`impl="fused"`), in the spatial tiles of at least 16 pixels (a dot's minimum)
    with 64 or 128 output columns per step. `pooled` as for `tuning_candidates`."""
    fused = [dict(impl="fused", **config, block_n=block_n)
             for config in tuning_candidates(batch, h, w, channels, pooled) if config["block_p"] >= 16
             for block_n in (64, 128)]
    return [dict(impl="separate", block_p=0, num_warps=0, pool_block=0, split_conv=False, block_n=0)] + fused


def adapter_spatial_out_triton(z, h: int, w: int, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2,
                               noise_b2, proj, proj_bias, w2, b2, residual,
                               tuning: Optional[dict] = None, partials: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`adapter_out(adapter_spatial(z, ...), w2, b2, residual)` as `[B, 1+h·w, D]`: the tuner's choice of the two
    launchers one after the other (the default) or the spatial kernel with adapter_out in its epilogue (g never
    stored). w2 `[D, r]`, b2 `[D]`, residual `[B, 1+h·w, D]`, any strides. `tuning` overrides keys of the default
    (`impl="fused"` with the spatial keys and `block_n`: the fused kernel). `partials` as for
    `adapter_spatial_triton`."""
    op = "adapter_spatial_out"
    launch = _SpatialLaunch(op, z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2,
                            proj, proj_bias, partials)
    check_launch(op, dict(z=z, w2=w2, b2=b2, residual=residual))
    batch, tokens, channels = z.shape
    width = w2.shape[0]
    check_shape(op, "w2", w2, (width, channels))
    check_shape(op, "b2", b2, (width,))
    check_shape(op, "residual", residual, (batch, tokens, width))
    if residual.dtype != z.dtype:
        raise KernelInputError(f"htkernels::{op}: residual has dtype {residual.dtype}, z {z.dtype}; expected one dtype")
    allocated = []

    def run(config):
        if config["impl"] == "separate":
            g = adapter_spatial_triton(z, h, w, spectral, *launch.weights, partials=partials)
            return adapter_out_triton(g.view(-1, channels), w2, b2, residual.reshape(-1, width)).view(batch, tokens,
                                                                                                    width)
        if not allocated:
            allocated.append(torch.empty((batch, tokens, width), device=z.device, dtype=z.dtype))
        launch(config, allocated[0], out=(w2, b2, residual))
        return allocated[0]

    if batch == 0:
        return torch.empty((batch, tokens, width), device=z.device, dtype=z.dtype)
    # The fused epilogue indexes the residual and y in int32: past that only the two launches run (cuBLAS there).
    fits = int32_offsets(z, residual, w2, output_elements=batch * tokens * width)
    candidates = spatial_out_candidates(*launch.shape, pooled=partials is not None)
    candidates = candidates if fits else candidates[:1]
    return run(tuned_config(op, launch.key + (width,), candidates, run, z.device, tuning,
                            _check_spatial_out_tuning(h, w)))


def _check_spatial_out_tuning(h: int, w: int):
    spatial = _check_tuning(h, w)

    def validate(config):
        if config["impl"] not in ("separate", "fused"):
            raise KernelInputError(f"htkernels::adapter_spatial_out: tuning impl={config['impl']!r}; expected "
                                   "'separate' or 'fused'")
        if config["impl"] == "fused":
            spatial(config)
            if config["block_p"] < 16 or config["block_n"] < 16 or config["block_n"] & (config["block_n"] - 1):
                raise KernelInputError(f"htkernels::adapter_spatial_out: tuning {config} needs block_p ≥ 16 and a "
                                       "power-of-two block_n ≥ 16 (the epilogue's dot)")
    return validate


def _adapter_spatial_fake(z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                          proj_bias):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


@register_op("adapter_spatial", cuda=adapter_spatial_triton, fake=_adapter_spatial_fake)
def adapter_spatial(z: torch.Tensor, h: int, w: int, spectral: Optional[torch.Tensor], k3: torch.Tensor,
                    k5: torch.Tensor, k7: torch.Tensor, conv_bias: torch.Tensor, noise_w1: torch.Tensor,
                    noise_b1: torch.Tensor, noise_w2: torch.Tensor, noise_b2: torch.Tensor, proj: torch.Tensor,
                    proj_bias: torch.Tensor) -> torch.Tensor:
    """The public op: the reference on CPU, the Triton kernels on CUDA."""
    return adapter_spatial_ref(z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2,
                               proj, proj_bias)


def _adapter_spatial_out_fake(z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                              proj_bias, w2, b2, residual):
    return residual.new_empty((z.shape[0], z.shape[1], w2.shape[0]))


@register_op("adapter_spatial_out", cuda=adapter_spatial_out_triton, fake=_adapter_spatial_out_fake)
def adapter_spatial_out(z: torch.Tensor, h: int, w: int, spectral: Optional[torch.Tensor], k3: torch.Tensor,
                        k5: torch.Tensor, k7: torch.Tensor, conv_bias: torch.Tensor, noise_w1: torch.Tensor,
                        noise_b1: torch.Tensor, noise_w2: torch.Tensor, noise_b2: torch.Tensor, proj: torch.Tensor,
                        proj_bias: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                        residual: torch.Tensor) -> torch.Tensor:
    """The public op: `adapter_out(adapter_spatial(...))`'s references on CPU; on CUDA the tuned choice of the two
    launches or the fused kernel."""
    g = adapter_spatial_ref(z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                            proj_bias)
    batch, tokens, channels = z.shape
    return adapter_out_ref(g.reshape(-1, channels), w2, b2, residual.reshape(-1, w2.shape[0])).view(
        batch, tokens, w2.shape[0])
