"""`norm_linear`: LayerNorm folded into the GEMM that follows it (see htkernels/README.md).

A ViT block normalises its residual stream before qkv and before fc1; on its own each LayerNorm reads and writes the
`[M, D]` activation once more between two GEMMs. Folded, the GEMM reads x itself:

    act(LN(x)·Wᵀ + b) = act(rstd·(x·W'ᵀ − μ·colsum(W')) + b'),   W' = W·diag(γ),   b' = W·β + b

with the row mean μ and `rstd = 1/sqrt(var + eps)` computed by the GEMM program itself from the x tiles its K loop
loads anyway (no pre-pass, nothing from the previous kernel), the variance by Chan's pairwise update of per-tile
centred sums so that rows with a large mean or a few huge channels (CLIP's outlier features) do not cancel, and
`colsum(W')` from W' as stored, so the correction subtracts exactly what the dot added.

W', colsum and b' depend on the weights alone: computed once per weight tensors (`htkernels._cache`) when the fused
kernel first runs. The fused kernel is one launch-tuner candidate; the default is torch's LayerNorm followed by
`linear_act` (itself tuned between cuBLAS and its fused epilogue), which is what runs without tuning.
"""

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
from .linear_act import ACTIVATIONS, activation_ref, linear_act_triton
from .linear_act import tuning_candidates as linear_act_candidates


def norm_linear_ref(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor, eps: float, activation: str) -> torch.Tensor:
    """`act(LN(x)·weightᵀ + bias)` in fp32 (fp64 for fp64 x; LayerNorm with affine γ = norm_weight, β = norm_bias,
    biased variance), returned in the dtype of x; x `[M,K]`, norm_weight and norm_bias `[K]`, weight `[N,K]`,
    bias `[N]`."""
    compute = torch.promote_types(x.dtype, torch.float32)
    xf, gamma, beta, w, b = (t.to(compute) for t in (x, norm_weight, norm_bias, weight, bias))
    normed = F.layer_norm(xf, (xf.shape[-1],), gamma, beta, eps)
    return activation_ref(normed @ w.t() + b, activation).to(x.dtype)


def fold_norm(norm_weight: torch.Tensor, norm_bias: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              dtype: torch.dtype) -> tuple:
    """`(W' [N,K] in dtype, colsum(W') fp32 [N], b' fp32 [N])`: `W' = W·diag(γ)`, its row sums as stored (after the
    rounding to dtype) and `b' = W·β + b`, all from fp32 products."""
    folded = (weight.float() * norm_weight.float()[None, :]).to(dtype).contiguous()
    colsum = folded.float().sum(dim=1)
    folded_bias = weight.float() @ norm_bias.float() + bias.float()
    return folded, colsum.contiguous(), folded_bias.contiguous()


# W', colsum(W') and b' per (γ, β, W, b) tensors and GEMM dtype, recomputed only when one of them changes.
FOLDED = WeightsCache(fold_norm)


@jit
def _norm_linear_kernel(
    x_ptr, w_ptr, colsum_ptr, b_ptr, y_ptr,  # x [M,K], w = W·diag(γ) [N,K], colsum, b = W·β + b fp32 [N] → y [M,N]
    M, N, K, eps,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ACTIVATION: tl.constexpr, IEEE_FP32: tl.constexpr, INTERPRET_BF16: tl.constexpr, PDL: tl.constexpr,
):
    """One program: a BLOCK_M×BLOCK_N tile of `y = act(rstd·(x·wᵀ − μ·colsum) + b)`.

    The K loop accumulates `x·wᵀ` (exact fp32 products for fp32 data, tensor cores in the storage dtype for
    fp16/bf16, fp32 accumulation) and, from the same x tiles, each row's mean and centred sum of squares: per tile
    its own mean and centred squares, merged into the running ones by Chan's update
    `m2 += m2_tile + δ²·n·n_tile/(n+n_tile)`, `μ += δ·n_tile/(n+n_tile)` (δ = tile mean − running mean), which
    does not cancel on rows with a large mean. fp32 data is first shifted by its row's mean over the first tile,
    `c` (`x − c` is exact where x is near c), and the dot and the statistics see `x − c`: the row's mean, and the
    `μ·colsum` the epilogue subtracts, are then of the order of σ, not |μ| (on raw x both would carry fp32's
    rounding of |μ|: 2.7e-5 relative error at |μ| = 100σ, over the fp32 bound). fp16/bf16 data enters raw (exact
    products; fp32's rounding of |μ| stays far below their own). The epilogue applies
    `rstd = 1/sqrt(m2/K + eps)`, the bias and the activation (0 none, 1 GELU erf, 2 QuickGELU) to the fp32
    accumulator; one store in the dtype of y."""
    wait_for_producer(PDL)
    rows, cols = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    row_mask = rows < M
    col_mask = cols < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    shift = tl.zeros([BLOCK_M], dtype=tl.float32)
    if IEEE_FP32:
        first_ks = tl.arange(0, BLOCK_K)
        first = tl.load(x_ptr + rows[:, None] * stride_xm + first_ks[None, :] * stride_xk,
                        mask=row_mask[:, None] & (first_ks < K)[None, :], other=0.0).to(tl.float32)
        shift = tl.sum(first, axis=1) / tl.sum((first_ks < K).to(tl.float32), axis=0)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        a = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk,
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn,
                    mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        af = a.to(tl.float32)
        if IEEE_FP32:
            af = tl.where(k_mask[None, :], af - shift[:, None], 0.0)
            acc += tl.dot(af, b.to(tl.float32), input_precision="ieee")
        else:
            acc += dot_low(a, b.to(a.dtype), INTERPRET_BF16)
        count = tl.sum(k_mask.to(tl.float32), axis=0)
        tile_mean = tl.sum(af, axis=1) / count
        centred = tl.where(k_mask[None, :], af - tile_mean[:, None], 0.0)
        seen = k0 * 1.0
        delta = tile_mean - mean
        mean += delta * (count / (seen + count))
        m2 += tl.sum(centred * centred, axis=1) + delta * delta * (seen * count / (seen + count))
    rstd = 1.0 / tl.sqrt(m2 / K + eps)
    colsum = tl.load(colsum_ptr + cols, mask=col_mask, other=0.0)
    bias = tl.load(b_ptr + cols, mask=col_mask, other=0.0)
    acc = rstd[:, None] * (acc - mean[:, None] * colsum[None, :]) + bias[None, :]
    if ACTIVATION == 1:
        acc = gelu_erf(acc)
    elif ACTIVATION == 2:
        acc = acc * tl.sigmoid(1.702 * acc)
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :] * stride_yn,
             round_bf16(acc, INTERPRET_BF16).to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def tuning_candidates(rows: int) -> list:
    """Launch configurations the tuner (`htkernels._tune`) times for `rows` rows; the first is the default: torch's
    LayerNorm, then `linear_act` (its own tuned choice of cuBLAS or the fused epilogue), `impl="torch"`. The others
    run the folded kernel in the tiles of `linear_act`'s fused candidates; it runs only where the tuner measured it
    faster."""
    return [TORCH_IMPL] + [c for c in linear_act_candidates(rows) if c["impl"] == "triton"]


def norm_linear_triton(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor, eps: float, activation: str, tuning: Optional[dict] = None) -> torch.Tensor:
    """Launcher: checks, the folded weights (`FOLDED`, once per weights), output allocation (dtype of x), grid.
    Any strides.

    The launch configuration (`impl`, `block_m`, `block_n`, `num_warps`, `num_stages`) is the tuner's choice among
    `tuning_candidates` on a GPU; `tuning` overrides keys of the default instead (`impl="triton"`: the folded
    kernel)."""
    op = "norm_linear"
    if activation not in ACTIVATIONS:
        raise KernelInputError(f"htkernels::{op}: activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    check_launch(op, dict(x=x, norm_weight=norm_weight, norm_bias=norm_bias, weight=weight, bias=bias))
    check_rank(op, "x", x, "[M, K]")
    rows, inner = x.shape
    outputs = weight.shape[0]
    check_shape(op, "norm_weight", norm_weight, (inner,))
    check_shape(op, "norm_bias", norm_bias, (inner,))
    check_shape(op, "weight", weight, (outputs, inner))
    check_shape(op, "bias", bias, (outputs,))
    if rows == 0:
        return torch.empty((rows, outputs), device=x.device, dtype=x.dtype)
    allocated = []  # the folded kernel's output, allocated once and only if it runs

    def launch(config):
        if config["impl"] == "torch":
            normed = F.layer_norm(x, (inner,), norm_weight.to(x.dtype), norm_bias.to(x.dtype), eps)
            return linear_act_triton(normed, weight, bias, activation)
        folded, colsum, folded_bias = FOLDED.get((norm_weight, norm_bias, weight, bias), x.dtype)
        if not allocated:
            allocated.append(torch.empty((rows, outputs), device=x.device, dtype=x.dtype))
        y = allocated[0]
        block_m, block_n = config["block_m"], config["block_n"]
        _norm_linear_kernel[(cdiv(rows, block_m) * cdiv(outputs, block_n),)](
            x, folded, colsum, folded_bias, y, rows, outputs, inner, float(eps),
            x.stride(0), x.stride(1), folded.stride(0), folded.stride(1), y.stride(0), y.stride(1),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=64, GROUP_M=8, ACTIVATION=ACTIVATIONS[activation],
            IEEE_FP32=x.dtype == torch.float32, INTERPRET_BF16=interpret_bf16(x.dtype),
            num_warps=config["num_warps"], num_stages=config["num_stages"], **pdl_options(x.device),
        )
        return y

    # Past int32 element offsets only torch's LayerNorm and linear_act (cuBLAS there) run.
    fits = int32_offsets(x, weight, output_elements=rows * outputs)
    candidates = tuning_candidates(rows) if fits else [TORCH_IMPL]
    return launch(tuned_config(op, (rows, inner, outputs, x.dtype, activation), candidates, launch, x.device, tuning,
                               check_impl(op)))


def _norm_linear_fake(x, norm_weight, norm_bias, weight, bias, eps, activation):
    return x.new_empty((x.shape[0], weight.shape[0]))


@register_op("norm_linear", cuda=norm_linear_triton, fake=_norm_linear_fake)
def norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, eps: float, activation: str) -> torch.Tensor:
    """The public op: the reference on CPU, on CUDA the tuned choice of LayerNorm + `linear_act` or the folded
    kernel."""
    return norm_linear_ref(x, norm_weight, norm_bias, weight, bias, eps, activation)
