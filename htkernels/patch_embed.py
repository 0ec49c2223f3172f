"""`patch_embed`: a ViT's patch embedding as one GEMM whose A operand is read from the image itself (see
htkernels/README.md).

Unfused, the embedding is five kernels at batch 1: the image's conversion to the GEMM dtype, the im2col copy of its
patches, the GEMM (bias in cuBLAS's epilogue), the position embedding's add and the concatenation behind the CLS
row. Here one program computes a tile of patch rows × embedding columns: its K loop loads the patch pixels straight
from the fp32 image at their im2col addresses, converts them to the weight dtype (the same rounding as the
separate conversion) and accumulates in fp32; the epilogue adds the bias and the position embedding and stores the
row behind the image's CLS row, and the programs holding an image's first patch also store its CLS row (CLS token
plus its position embedding). `ln_pre` (OpenAI CLIP), a LayerNorm over whole rows, stays after it.
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
    dot_low,
    grouped_tile,
    interpret_bf16,
    jit,
    pdl_options,
    round_bf16,
    tl,
    wait_for_producer,
)
from ._tune import TORCH_IMPL, check_impl, int32_offsets, tuned_config
from .errors import KernelInputError


def patch_embed_ref(images: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], cls_pos: torch.Tensor,
                    patch_pos: torch.Tensor, patch: int) -> torch.Tensor:
    """`[CLS; patches·weightᵀ + bias + pos]` in fp32 (fp64 for fp64 weights), returned in the dtype of weight: images `[B, 3, S, S]`,
    weight `[W, 3·p·p]` (the stride-p conv's kernel, flattened channel-major), bias `[W]` or None, cls_pos `[1, 1,
    W]` (CLS token plus its position embedding), patch_pos `[1, g·g, W]`, p = patch, g = S / p. Patches row-major,
    each flattened (channel, row, column)."""
    batch, channels, size, _ = images.shape
    grid = size // patch
    compute = torch.promote_types(weight.dtype, torch.float32)
    patches = images.to(weight.dtype).to(compute).reshape(batch, channels, grid, patch, grid, patch)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, grid * grid, -1)
    x = patches @ weight.to(compute).t() + patch_pos.to(compute)
    if bias is not None:
        x = x + bias.to(compute)
    return torch.cat([cls_pos.to(compute).expand(batch, -1, -1), x], dim=1).to(weight.dtype)


def patch_embed_torch(images: torch.Tensor, project, cls_pos: torch.Tensor, patch_pos: torch.Tensor,
                      patch: int) -> torch.Tensor:
    """The unfused form in the dtype of cls_pos: conversion, im2col copy, `project` (the GEMM + bias: cuBLAS on
    CUDA; a dense layer mapping the last dim), position add, concatenation. The launcher's default and the torch
    provider's `patch_embed`."""
    batch, channels, size, _ = images.shape
    grid = size // patch
    patches = images.to(cls_pos.dtype).reshape(batch, channels, grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5)
    x = project(patches.reshape(batch, grid * grid, -1)) + patch_pos
    return torch.cat([cls_pos.expand(batch, -1, -1), x], dim=1)


@jit
def _patch_embed_kernel(
    images_ptr, w_ptr, b_ptr, pos_ptr, cls_ptr, y_ptr,  # images [B,C,S,S], w [N,K], b [N], pos [G·G,N], cls [N]
    M, N, K, G, P,                                      # → y [B, 1+G·G, N]; M = B·G·G patch rows, K = C·P·P
    stride_ib, stride_ic, stride_ih, stride_iw, stride_wn, stride_wk, stride_pt, stride_pn,
    stride_yb, stride_yt, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, IEEE_FP32: tl.constexpr, INTERPRET_BF16: tl.constexpr, PDL: tl.constexpr,
):
    """One program: patch rows `rows` (image b = row // G², patch t = row % G², at grid cell (t // G, t % G)) ×
    embedding columns `cols`. The A tile is gathered from the image: column k is pixel (channel k // P², row
    k // P % P, column k % P) of the patch, converted to the weight dtype. fp32 accumulation (exact products for
    fp32, tensor cores for fp16/bf16); epilogue `+ bias + pos[t]`, one store at token 1 + t; rows with t = 0 also
    store the image's CLS row `cls` at token 0."""
    wait_for_producer(PDL)
    rows, cols = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    row_mask = rows < M
    col_mask = cols < N
    cells = G * G
    image = rows // cells
    token = rows % cells
    origin = image * stride_ib + (token // G) * P * stride_ih + (token % G) * P * stride_iw
    area = P * P
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        offset = (ks // area) * stride_ic + (ks // P % P) * stride_ih + (ks % P) * stride_iw
        a = tl.load(images_ptr + origin[:, None] + offset[None, :], mask=row_mask[:, None] & k_mask[None, :],
                    other=0.0)
        b = tl.load(w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn,
                    mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        if IEEE_FP32:
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            acc += dot_low(round_bf16(a.to(tl.float32), INTERPRET_BF16).to(b.dtype), b, INTERPRET_BF16)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    mask = row_mask[:, None] & col_mask[None, :]
    acc += tl.load(pos_ptr + token[:, None] * stride_pt + cols[None, :] * stride_pn, mask=mask, other=0.0).to(
        tl.float32)
    out = y_ptr + image[:, None] * stride_yb + cols[None, :] * stride_yn
    tl.store(out + (1 + token[:, None]) * stride_yt, round_bf16(acc, INTERPRET_BF16).to(y_ptr.dtype.element_ty),
             mask=mask)
    cls = tl.load(cls_ptr + cols, mask=col_mask, other=0.0).to(y_ptr.dtype.element_ty)
    tl.store(out, tl.broadcast_to(cls[None, :], (BLOCK_M, BLOCK_N)), mask=mask & (token == 0)[:, None])


def tuning_candidates(rows: int) -> list:
    """Launch configurations the tuner (`htkernels._tune`) times for `rows` patch rows; the first is the default:
    the unfused torch ops (`impl="torch"`, cuBLAS for the GEMM), the others the fused kernel. It runs only where
    the tuner measured it faster."""
    shapes = [(32, 64, 4, 4), (64, 64, 4, 4), (64, 128, 4, 3), (16, 64, 4, 4)] if rows <= 512 \
        else [(128, 128, 8, 3), (128, 256, 8, 3), (64, 128, 4, 4)]
    return [TORCH_IMPL] + [dict(impl="triton", block_m=m, block_n=n, num_warps=w, num_stages=st)
                           for m, n, w, st in shapes]


def patch_embed_triton(images: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], cls_pos: torch.Tensor,
                       patch_pos: torch.Tensor, patch: int, tuning: Optional[dict] = None) -> torch.Tensor:
    """Launcher of `_patch_embed_kernel`: checks, output allocation (dtype of weight), grid. Any image strides.

    The launch configuration (`impl`, `block_m`, `block_n`, `num_warps`, `num_stages`) is the tuner's choice among
    `tuning_candidates` on a GPU; `tuning` overrides keys of the default instead (`impl="triton"`: the kernel)."""
    op = "patch_embed"
    check_launch(op, dict(images=images, weight=weight, bias=bias, cls_pos=cls_pos, patch_pos=patch_pos))
    check_rank(op, "images", images, "[B, C, S, S]")
    batch, channels, size, size_w = images.shape
    if patch < 1 or size != size_w or size % patch:
        raise KernelInputError(f"htkernels::{op}: images {list(images.shape)} are not square multiples of the "
                               f"patch size {patch}")
    grid = size // patch
    width, inner = weight.shape[0], channels * patch * patch
    check_shape(op, "weight", weight, (width, inner))
    if bias is not None:
        check_shape(op, "bias", bias, (width,))
    check_shape(op, "cls_pos", cls_pos, (1, 1, width))
    if cls_pos.dtype != weight.dtype or patch_pos.dtype != weight.dtype:
        raise KernelInputError(f"htkernels::{op}: cls_pos ({cls_pos.dtype}) and patch_pos ({patch_pos.dtype}) must "
                               f"have the weight's dtype {weight.dtype}")
    check_shape(op, "patch_pos", patch_pos, (1, grid * grid, width))
    rows = batch * grid * grid
    allocated = []

    def launch(config):
        if config["impl"] == "torch":
            return patch_embed_torch(images, lambda patches: F.linear(patches, weight, bias), cls_pos, patch_pos, patch)
        if not allocated:
            allocated.append(torch.empty((batch, 1 + grid * grid, width), device=images.device, dtype=weight.dtype))
        y = allocated[0]
        if batch == 0:
            return y
        pos = patch_pos[0]
        block_m, block_n = config["block_m"], config["block_n"]
        _patch_embed_kernel[(cdiv(rows, block_m) * cdiv(width, block_n),)](
            images, weight, bias if bias is not None else weight, pos, cls_pos.reshape(width), y,
            rows, width, inner, grid, patch,
            images.stride(0), images.stride(1), images.stride(2), images.stride(3), weight.stride(0),
            weight.stride(1), pos.stride(0), pos.stride(1), y.stride(0), y.stride(1), y.stride(2),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=64, GROUP_M=8, HAS_BIAS=bias is not None,
            IEEE_FP32=weight.dtype == torch.float32, INTERPRET_BF16=interpret_bf16(weight.dtype),
            num_warps=config["num_warps"], num_stages=config["num_stages"], **pdl_options(images.device),
        )
        return y

    fits = int32_offsets(images, weight, output_elements=batch * (1 + grid * grid) * width)
    candidates = tuning_candidates(rows) if fits and batch else [TORCH_IMPL]
    return launch(tuned_config(op, (batch, size, patch, width, weight.dtype), candidates, launch, images.device, tuning,
                               check_impl(op)))


def _patch_embed_fake(images, weight, bias, cls_pos, patch_pos, patch):
    grid = images.shape[2] // patch
    return weight.new_empty((images.shape[0], 1 + grid * grid, weight.shape[0]))


@register_op("patch_embed", cuda=patch_embed_triton, fake=_patch_embed_fake)
def patch_embed(images: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], cls_pos: torch.Tensor,
                patch_pos: torch.Tensor, patch: int) -> torch.Tensor:
    """The public op: the reference on CPU, on CUDA the tuned choice of the unfused ops or the fused kernel."""
    return patch_embed_ref(images, weight, bias, cls_pos, patch_pos, patch)
