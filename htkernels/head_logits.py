"""`head_logits`: the seg head's tail, its levels' pixel rows through the folded output layer into grid logits
(see htkernels/README.md)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._registry import register_op
from ._triton import cdiv, check_launch, check_shape, jit, pdl_options, pow2_at_least, tl, wait_for_producer
from ._tune import int32_offsets, tuned_config
from .errors import KernelInputError

MAX_LEVELS = 4
TORCH_TAIL = dict(impl="torch", block_p=0, block_k=0, num_warps=0)


def head_logits_ref(levels: list, weight: torch.Tensor, bias: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """levels `[B, 1+h·w, K_ℓ]` → `maps fp32 [B, C, h, w]`: the levels' pixel rows (CLS dropped) side by side, in fp32,
    times weight `[C, ΣK_ℓ]`ᵀ + bias `[C]`, one map per class (a class-strided view of the pixel-major logits; the
    op and its launcher return it contiguous)."""
    stacked = torch.cat([level[:, 1:] for level in levels], dim=-1).float()
    logits = F.linear(stacked, weight.float(), bias.float())
    return logits.transpose(1, 2).reshape(stacked.shape[0], -1, h, w)


@jit
def _level_dot(acc, level_ptr, image, pixels, pixel_mask, stride_b, stride_n, stride_k, K, w_ptr, first, classes,
               class_mask, stride_wc, stride_wk, BLOCK_K: tl.constexpr):
    """acc `[BLOCK_P, BLOCK_C]` + one level's pixel rows `[BLOCK_P, K]` (fp32) times its weight columns
    `[first, first + K)`, exact fp32 products."""
    rows = level_ptr + image * stride_b + (1 + pixels)[:, None] * stride_n
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        a = tl.load(rows + ks[None, :] * stride_k, mask=pixel_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w_ptr + classes[None, :] * stride_wc + (first + ks)[:, None] * stride_wk,
                    mask=k_mask[:, None] & class_mask[None, :], other=0.0)
        acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return acc


@jit
def _head_logits_kernel(
    l0_ptr, l1_ptr, l2_ptr, l3_ptr, w_ptr, b_ptr, y_ptr,  # levels [B,1+h·w,K_ℓ], w [C,ΣK], b [C] → y fp32 [B,C,h·w]
    HW, C, K0, K1, K2, K3,
    stride_0b, stride_0n, stride_0k, stride_1b, stride_1n, stride_1k, stride_2b, stride_2n, stride_2k,
    stride_3b, stride_3n, stride_3k, stride_wc, stride_wk, stride_yb, stride_yc, stride_yp,
    LEVELS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """One program: image `program_id(1)`, pixels `[BLOCK_P·program_id(0), +BLOCK_P)`, every class. The levels are
    read where they are (no concatenated copy, CLS rows skipped by the addressing), accumulated in fp32, and the
    logits stored class-major, as the maps (no transposed copy)."""
    wait_for_producer(PDL)
    image = tl.program_id(1)
    pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = pixels < HW
    classes = tl.arange(0, BLOCK_C)
    class_mask = classes < C
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    acc = _level_dot(acc, l0_ptr, image, pixels, pixel_mask, stride_0b, stride_0n, stride_0k, K0, w_ptr, 0, classes,
                     class_mask, stride_wc, stride_wk, BLOCK_K)
    if LEVELS > 1:
        acc = _level_dot(acc, l1_ptr, image, pixels, pixel_mask, stride_1b, stride_1n, stride_1k, K1, w_ptr, K0,
                         classes, class_mask, stride_wc, stride_wk, BLOCK_K)
    if LEVELS > 2:
        acc = _level_dot(acc, l2_ptr, image, pixels, pixel_mask, stride_2b, stride_2n, stride_2k, K2, w_ptr, K0 + K1,
                         classes, class_mask, stride_wc, stride_wk, BLOCK_K)
    if LEVELS > 3:
        acc = _level_dot(acc, l3_ptr, image, pixels, pixel_mask, stride_3b, stride_3n, stride_3k, K3, w_ptr,
                         K0 + K1 + K2, classes, class_mask, stride_wc, stride_wk, BLOCK_K)
    acc += tl.load(b_ptr + classes, mask=class_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + image * stride_yb + classes[None, :] * stride_yc + pixels[:, None] * stride_yp, acc,
             mask=pixel_mask[:, None] & class_mask[None, :])


def tuning_candidates(pixels: int) -> list:
    """Launch configurations the tuner times; the first, torch's concatenation, fp32 copy, GEMM and transposed copy
    (four kernels), is the default. The kernel: 16-64-pixel tiles (at batch 1 a 14×14 grid is 4-13 programs per
    image), 64-wide K steps."""
    tiles = [(32, 64, 4), (16, 64, 4), (64, 64, 4)] if pixels <= 256 else [(64, 64, 4), (32, 64, 4), (128, 32, 8)]
    return [TORCH_TAIL] + [dict(impl="triton", block_p=p, block_k=k, num_warps=nw) for p, k, nw in tiles]


def _check_tuning(config: dict) -> None:
    if config["impl"] not in ("torch", "triton"):
        raise KernelInputError(f"htkernels::head_logits: tuning impl={config['impl']!r}; expected 'torch' or 'triton'")
    if config["impl"] == "triton" and any(config[key] < 16 or config[key] & (config[key] - 1)
                                          for key in ("block_p", "block_k")):
        raise KernelInputError(f"htkernels::head_logits: tuning {config} needs power-of-two block_p and block_k ≥ 16")


def head_logits_triton(levels: list, weight: torch.Tensor, bias: torch.Tensor, h: int, w: int,
                       tuning: Optional[dict] = None) -> torch.Tensor:
    """Launcher: checks, output `[B, C, h, w]` fp32, grid; levels any strides. The tuner's choice of torch's ops or
    the kernel (`tuning_candidates`); `tuning` overrides keys of the default instead."""
    op = "head_logits"
    levels = list(levels)
    if not 1 <= len(levels) <= MAX_LEVELS:
        raise KernelInputError(f"htkernels::{op}: {len(levels)} levels; expected 1 to {MAX_LEVELS}")
    check_launch(op, {**{f"level {i}": level for i, level in enumerate(levels)}, "weight": weight, "bias": bias})
    batch, tokens = levels[0].shape[:2]
    widths = []
    for index, level in enumerate(levels):
        if level.dim() != 3 or level.shape[:2] != (batch, tokens):
            raise KernelInputError(f"htkernels::{op}: level {index} has shape {list(level.shape)}; expected "
                                   f"[{batch}, {tokens}, K] like level 0")
        widths.append(level.shape[2])
    if tokens != 1 + h * w:
        raise KernelInputError(f"htkernels::{op}: the levels have {tokens} tokens, expected 1 + {h}*{w} = {1 + h * w}")
    classes = weight.shape[0]
    check_shape(op, "weight", weight, (classes, sum(widths)))
    check_shape(op, "bias", bias, (classes,))
    maps = []

    def launch(config):
        if config["impl"] == "torch":
            return head_logits_ref(levels, weight, bias, h, w).contiguous()
        if not maps:
            maps.append(torch.empty((batch, classes, h, w), device=weight.device, dtype=torch.float32))
        y = maps[0]
        padded = levels + [levels[0]] * (MAX_LEVELS - len(levels))
        _head_logits_kernel[(cdiv(h * w, config["block_p"]), batch)](
            *padded, weight, bias, y, h * w, classes, *(widths + [0] * (MAX_LEVELS - len(widths))),
            *[stride for level in padded for stride in level.stride()], weight.stride(0), weight.stride(1),
            y.stride(0), y.stride(1), 1,
            LEVELS=len(levels), BLOCK_P=config["block_p"], BLOCK_C=pow2_at_least(classes),
            BLOCK_K=config["block_k"], num_warps=config["num_warps"], **pdl_options(weight.device),
        )
        return y

    if batch == 0:
        return head_logits_ref(levels, weight, bias, h, w).contiguous()
    key = (batch, h, w, tuple(widths), classes, levels[0].dtype)
    # The kernel indexes in int32: past that (tens of thousands of images) only torch's ops run.
    fits = int32_offsets(*levels, weight, output_elements=batch * classes * h * w)
    candidates = tuning_candidates(h * w) if fits else [TORCH_TAIL]
    return launch(tuned_config(op, key, candidates, launch, weight.device, tuning, _check_tuning))


def _head_logits_fake(levels, weight, bias, h, w):
    return levels[0].new_empty((levels[0].shape[0], weight.shape[0], h, w), dtype=torch.float32)


@register_op("head_logits", cuda=head_logits_triton, fake=_head_logits_fake)
def head_logits(levels: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The public op: the reference on CPU, the tuned choice on CUDA."""
    return head_logits_ref(levels, weight, bias, h, w).contiguous()
