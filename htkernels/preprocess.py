"""`preprocess`: uint8 frames → resized (Pillow bicubic, antialiased), scaled, 3-channel batch (htkernels/README.md)."""

from __future__ import annotations

import math

import torch

from ._registry import register_op
from ._triton import (
    cdiv,
    check_launch,
    check_shape,
    interpret_bf16,
    jit,
    pdl_options,
    round_bf16,
    tl,
    wait_for_producer,
)
from .errors import KernelInputError
from .pillow import vertical_pass_first

_PRECISION_BITS = 22


def _round_fixed_point(acc: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.div(acc + (1 << (_PRECISION_BITS - 1)), 1 << _PRECISION_BITS, rounding_mode="floor"),
                       0, 255)


def preprocess_ref(frames: torch.Tensor, row_weights: torch.Tensor, col_weights: torch.Tensor, scale: float,
                   out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """frames uint8 `[B,H,W]` or `[B,H,W,3]`, row_weights int32 `[S,H]`, col_weights int32 `[S,W]` → `[B,3,S,S]`."""
    if frames.dim() == 4:
        rgb = frames.to(torch.int64)
        frames = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    gray = frames.to(torch.float64)
    height, width = gray.shape[1:]
    out_h, out_w = row_weights.shape[0], col_weights.shape[0]
    vertical_first = vertical_pass_first(height, width, out_h, out_w)
    if height != out_h and vertical_first:
        gray = _round_fixed_point(row_weights.to(torch.float64) @ gray)
    if width != out_w:
        gray = _round_fixed_point(gray @ col_weights.to(torch.float64).t())
    if height != out_h and not vertical_first:
        gray = _round_fixed_point(row_weights.to(torch.float64) @ gray)
    plane = (gray * scale).to(out_dtype)
    return plane[:, None].expand(-1, 3, -1, -1).contiguous()


@jit
def _gray_pixel(frame_ptr, ys, xs, mask, stride_h, stride_w, stride_c, IS_RGB: tl.constexpr):
    """uint8 luma at (ys, xs) as int64; RGB through Pillow's integer `convert("L")` formula."""
    base = frame_ptr + ys * stride_h + xs * stride_w
    if IS_RGB:
        red = tl.load(base, mask=mask, other=0).to(tl.int64)
        green = tl.load(base + stride_c, mask=mask, other=0).to(tl.int64)
        blue = tl.load(base + 2 * stride_c, mask=mask, other=0).to(tl.int64)
        luma = (red * 19595 + green * 38470 + blue * 7471 + 32768) >> 16
    else:
        luma = tl.load(base, mask=mask, other=0).to(tl.int64)
    return luma


@jit
def _round_fixed(acc):
    """Pillow's rounding of a 22-fractional-bit accumulator to uint8 (floor of acc/2²² + ½, clipped)."""
    return tl.minimum(tl.maximum((acc + (1 << 21)) >> 22, 0), 255)


@jit
def _preprocess_kernel(
    frames_ptr,  # uint8 [B,H,W] or [B,H,W,3] (any strides)
    row_w_ptr, col_w_ptr,  # int32 [S_h,H], [S_w,W] (contiguous): Pillow fixed-point coefficients
    row_start_ptr, col_start_ptr,  # int32 [S_h], [S_w]: first non-zero tap of each output row / column
    out_ptr,  # [B,3,S_h,S_w] of the output dtype
    H, W, OUT_H, OUT_W, TAPS_V, TAPS_H, scale,
    stride_fb, stride_fh, stride_fw, stride_fc, stride_ob, stride_oc, stride_oh, stride_ow,
    IS_RGB: tl.constexpr, RESIZE_H: tl.constexpr, RESIZE_V: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, INTERPRET_BF16: tl.constexpr, PDL: tl.constexpr,
):
    """One program: a BLOCK_I×BLOCK_J tile of one output image, exact integer arithmetic (int64).

    Each output pixel (i, j) takes the TAPS_V source rows `row_start[i] + t` and for each the horizontal pass
    value `round(Σ_u col_w[j, x] · pixel(y, x))`, `x = col_start[j] + u`, then `round(Σ_t row_w[i, y] · that)`:
    Pillow's two passes with the uint8 rounding in between, with no intermediate image in memory (rows shared
    by neighbouring outputs are recomputed: the taps are few and the frame stays in cache). A pass whose size
    does not change is skipped, as Pillow does.
    """
    wait_for_producer(PDL)
    image = tl.program_id(0)
    out_rows = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    out_cols = tl.program_id(2) * BLOCK_J + tl.arange(0, BLOCK_J)
    row_mask = out_rows < OUT_H
    col_mask = out_cols < OUT_W
    frame = frames_ptr + image * stride_fb
    if RESIZE_H:
        col_start = tl.load(col_start_ptr + out_cols, mask=col_mask, other=0)
    else:
        col_start = out_cols
    if RESIZE_V:
        row_start = tl.load(row_start_ptr + out_rows, mask=row_mask, other=0)
        acc = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.int64)
        for t in range(0, TAPS_V):
            ys = row_start + t
            y_mask = row_mask & (ys < H)
            row_weight = tl.load(row_w_ptr + out_rows * H + ys, mask=y_mask, other=0).to(tl.int64)
            if RESIZE_H:
                horizontal = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.int64)
                for u in range(0, TAPS_H):
                    xs = col_start + u
                    x_mask = col_mask & (xs < W)
                    col_weight = tl.load(col_w_ptr + out_cols * W + xs, mask=x_mask, other=0).to(tl.int64)
                    pixel = _gray_pixel(frame, ys[:, None], xs[None, :], y_mask[:, None] & x_mask[None, :],
                                        stride_fh, stride_fw, stride_fc, IS_RGB)
                    horizontal += pixel * col_weight[None, :]
                horizontal = _round_fixed(horizontal)
            else:
                horizontal = _gray_pixel(frame, ys[:, None], col_start[None, :], y_mask[:, None] & col_mask[None, :],
                                         stride_fh, stride_fw, stride_fc, IS_RGB)
            acc += row_weight[:, None] * horizontal
        value = _round_fixed(acc)
    else:
        if RESIZE_H:
            value = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.int64)
            for u in range(0, TAPS_H):
                xs = col_start + u
                x_mask = col_mask & (xs < W)
                col_weight = tl.load(col_w_ptr + out_cols * W + xs, mask=x_mask, other=0).to(tl.int64)
                pixel = _gray_pixel(frame, out_rows[:, None], xs[None, :], row_mask[:, None] & x_mask[None, :],
                                    stride_fh, stride_fw, stride_fc, IS_RGB)
                value += pixel * col_weight[None, :]
            value = _round_fixed(value)
        else:
            value = _gray_pixel(frame, out_rows[:, None], out_cols[None, :], row_mask[:, None] & col_mask[None, :],
                                stride_fh, stride_fw, stride_fc, IS_RGB)
    plane = round_bf16(value.to(tl.float32) * scale, INTERPRET_BF16).to(out_ptr.dtype.element_ty)
    mask = row_mask[:, None] & col_mask[None, :]
    out = out_ptr + image * stride_ob + out_rows[:, None] * stride_oh + out_cols[None, :] * stride_ow
    tl.store(out, plane, mask=mask)
    tl.store(out + stride_oc, plane, mask=mask)
    tl.store(out + 2 * stride_oc, plane, mask=mask)


def pillow_taps(in_size: int, out_size: int) -> int:
    """Pillow's window length for one bicubic pass: every non-zero coefficient of a row lies within it."""
    support = 2.0 * max(in_size / out_size, 1.0)
    return int(math.ceil(support)) * 2 + 1


def first_nonzero(weights: torch.Tensor) -> torch.Tensor:
    """Index of the first non-zero coefficient per row, int32, computed on the weights' device (no sync)."""
    nonzero = (weights != 0).to(torch.int32)
    return torch.argmax(nonzero, dim=1).to(torch.int32)


def preprocess_triton(frames: torch.Tensor, row_weights: torch.Tensor, col_weights: torch.Tensor, scale: float,
                      out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Launcher of `_preprocess_kernel`: checks, window starts, output allocation, grid."""
    op = "preprocess"
    check_launch(op, dict(frames=frames, row_weights=row_weights, col_weights=col_weights))
    if frames.dtype != torch.uint8:
        raise KernelInputError(f"htkernels::{op}: frames must be uint8, got {frames.dtype}")
    if not (frames.dim() == 3 or (frames.dim() == 4 and frames.shape[3] == 3)):
        raise KernelInputError(f"htkernels::{op}: frames must be [B,H,W] or [B,H,W,3], got {list(frames.shape)}")
    for name, weights in (("row_weights", row_weights), ("col_weights", col_weights)):
        if weights.dtype != torch.int32:
            raise KernelInputError(f"htkernels::{op}: {name} must be int32 fixed-point coefficients, got {weights.dtype}")
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise KernelInputError(f"htkernels::{op}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    batch, height, width = frames.shape[:3]
    out_h, out_w = row_weights.shape[0], col_weights.shape[0]
    check_shape(op, "row_weights", row_weights, (out_h, height))
    check_shape(op, "col_weights", col_weights, (out_w, width))
    if vertical_pass_first(height, width, out_h, out_w):
        # The kernel runs the horizontal pass first; on the transposed frame that is Pillow's vertical-first order.
        transposed = preprocess_triton(frames.transpose(1, 2), col_weights, row_weights, scale, out_dtype)
        return transposed.transpose(2, 3).contiguous()
    out = torch.empty((batch, 3, out_h, out_w), device=frames.device, dtype=out_dtype)
    if batch == 0:
        return out
    row_weights = row_weights.contiguous()
    col_weights = col_weights.contiguous()
    is_rgb = frames.dim() == 4
    block_i, block_j = 16, 32
    grid = (batch, cdiv(out_h, block_i), cdiv(out_w, block_j))
    _preprocess_kernel[grid](
        frames, row_weights, col_weights, first_nonzero(row_weights), first_nonzero(col_weights), out,
        height, width, out_h, out_w, pillow_taps(height, out_h), pillow_taps(width, out_w), float(scale),
        frames.stride(0), frames.stride(1), frames.stride(2), frames.stride(3) if is_rgb else 0,
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        IS_RGB=is_rgb, RESIZE_H=width != out_w, RESIZE_V=height != out_h, BLOCK_I=block_i, BLOCK_J=block_j,
        INTERPRET_BF16=interpret_bf16(out_dtype),
        num_warps=4, **pdl_options(frames.device),
    )
    return out


def _preprocess_fake(frames, row_weights, col_weights, scale, out_dtype):
    return frames.new_empty((frames.shape[0], 3, row_weights.shape[0], col_weights.shape[0]), dtype=out_dtype)


@register_op("preprocess", cuda=preprocess_triton, fake=_preprocess_fake)
def preprocess(frames: torch.Tensor, row_weights: torch.Tensor, col_weights: torch.Tensor, scale: float,
               out_dtype: torch.dtype) -> torch.Tensor:
    """The public op: the reference on CPU, the Triton kernel on CUDA."""
    return preprocess_ref(frames, row_weights, col_weights, scale, out_dtype)
