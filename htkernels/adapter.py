"""`adapter`: the whole HT adapter of one block, adapter_in then adapter_spatial_out (see htkernels/README.md).

One op for the pair so that the launch tuner can compare ways of running them that differ across the two kernels:
the two ops as they are (each with its own tuned launch, the default), or adapter_in tiling each image on its own
and leaving the partial sums of the image mean in its epilogue, which the spatial kernel then reads instead of
reducing the whole image again in every one of its programs (`impl="pooled"`).
"""

from __future__ import annotations

from typing import Optional

import torch

from ._registry import register_op
from ._triton import check_rank
from ._tune import tuned_config
from .adapter_in import adapter_in_pooled_triton, adapter_in_ref, adapter_in_triton
from .adapter_out import adapter_out_ref
from .adapter_spatial import adapter_spatial_out_triton, adapter_spatial_ref
from .errors import KernelInputError

IMPLS = ("separate", "pooled")


def adapter_ref(x, h: int, w: int, w_norm, w_raw, bias, eps: float, spectral, k3, k5, k7, conv_bias, noise_w1,
                noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2) -> torch.Tensor:
    """x `[B, 1+h·w, D]` → `y = x + adapter_spatial(adapter_in(x))·w2ᵀ + b2`, from the references of the parts."""
    batch, tokens, width = x.shape
    z = adapter_in_ref(x.reshape(-1, width), w_norm, w_raw, bias, eps).view(batch, tokens, -1)
    g = adapter_spatial_ref(z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                            proj_bias)
    return adapter_out_ref(g.reshape(batch * tokens, -1), w2, b2, x.reshape(-1, width)).view(batch, tokens, width)


def candidates() -> list:
    """The tuner's candidates; the first, the two ops as they are, is the default."""
    return [dict(impl=impl) for impl in IMPLS]


def _check_tuning(config: dict) -> None:
    if config["impl"] not in IMPLS:
        raise KernelInputError(f"htkernels::adapter: tuning impl={config['impl']!r}; expected one of {IMPLS}")


def adapter_triton(x, h: int, w: int, w_norm, w_raw, bias, eps: float, spectral, k3, k5, k7, conv_bias, noise_w1,
                   noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2,
                   tuning: Optional[dict] = None) -> torch.Tensor:
    """The tuner's choice of `adapter_in_triton` then `adapter_spatial_out_triton` (`impl="separate"`) or the pooled
    pair (`impl="pooled"`: `adapter_in_pooled_triton`, whose partial sums the spatial kernel's noise estimator
    reads). Each part keeps its own tuned launch; `tuning` names the impl."""
    check_rank("adapter", "x", x, "[B, N, D]")
    batch, tokens, width = x.shape
    if tokens != 1 + h * w:
        raise KernelInputError(f"htkernels::adapter: x has {tokens} tokens, expected 1 + {h}*{w} = {1 + h * w}")
    spatial = (h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2,
               x)
    x2d = x.reshape(-1, width)

    def run(config):
        if config["impl"] == "pooled":
            z, partials = adapter_in_pooled_triton(x2d, w_norm, w_raw, bias, eps, tokens)
        else:
            z, partials = adapter_in_triton(x2d, w_norm, w_raw, bias, eps), None
        return adapter_spatial_out_triton(z.view(batch, tokens, -1), *spatial, partials=partials)

    if batch == 0:
        return run(candidates()[0])
    key = (batch, h, w, width, w_norm.shape[0], x.dtype, spectral is not None)
    return run(tuned_config("adapter", key, candidates(), run, x.device, tuning, _check_tuning))


def _adapter_fake(x, h, w, w_norm, w_raw, bias, eps, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2,
                  noise_b2, proj, proj_bias, w2, b2):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@register_op("adapter", cuda=adapter_triton, fake=_adapter_fake)
def adapter(x: torch.Tensor, h: int, w: int, w_norm: torch.Tensor, w_raw: torch.Tensor, bias: torch.Tensor,
            eps: float, spectral: Optional[torch.Tensor], k3: torch.Tensor, k5: torch.Tensor, k7: torch.Tensor,
            conv_bias: torch.Tensor, noise_w1: torch.Tensor, noise_b1: torch.Tensor, noise_w2: torch.Tensor,
            noise_b2: torch.Tensor, proj: torch.Tensor, proj_bias: torch.Tensor, w2: torch.Tensor,
            b2: torch.Tensor) -> torch.Tensor:
    """The public op: the references on CPU; on CUDA the tuned choice of the separate or the pooled kernels."""
    return adapter_ref(x, h, w, w_norm, w_raw, bias, eps, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1,
                       noise_w2, noise_b2, proj, proj_bias, w2, b2)
