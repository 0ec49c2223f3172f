"""The graph every artifact is made from: the optimized model (exact rewrites, per-channel filters folded into
the convs, spectral filters as DFT matrix products: standard ops only, no FFT) with export-friendly adapter ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..optimize.kernels import TorchAdapterKernels
from ..optimize.rewrites import padded_depthwise_kernels


class ExportAdapterKernels(TorchAdapterKernels):
    """The torch provider's ops, except that the noise-weighted depthwise convs run as one static depthwise conv
    with three outputs per channel (the 3×3, 5×5 and 7×7 kernels, zero-padded to 7×7), weighted by α after it.

    The torch provider merges the three kernels into one per-sample 7×7 kernel, applied as unfold + batched dot
    (a grouped conv would need `groups = B·r`, which ONNX and TensorRT take only as a static attribute). Exported,
    that is an im2col gather and a large einsum; the static depthwise form here is one Conv that TensorRT fuses.
    Both forms are `Σ_k α_k (DW_k(F) + c_k) + S`.
    """

    @staticmethod
    def noise_weighted_convs(zf, filtered, alpha, spectral: bool, k3, k5, k7, conv_bias):
        batch, channels, h, w = filtered.shape
        size = k7.shape[-1]
        kernels = torch.stack(padded_depthwise_kernels(k3, k5, k7), dim=1).reshape(3 * channels, 1, size, size)
        responses = F.conv2d(filtered, kernels, padding=size // 2, groups=channels)
        t = (responses.reshape(batch, channels, 3, h * w) * alpha[:, None, :, None]).sum(dim=2)
        t = t + (alpha @ conv_bias.float())[:, :, None]
        # The residual is the unfiltered S (with a folded per-channel filter, the convs saw S itself).
        return t.transpose(1, 2) + zf[:, 1:]


def deployable_model(config, tensors: dict, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The model to export, in eval mode on CPU (`PackageError` when the tensors do not fit the config). `dtype` is
    the storage and GEMM dtype; inputs and logits stay float32."""
    from ..optimize.model import OptimizedHTModel

    return OptimizedHTModel(config, tensors, kernels=ExportAdapterKernels(), dtype=dtype).eval()
