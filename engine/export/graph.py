"""The graph every artifact is made from: the optimized model (exact rewrites, per-channel filters folded into
the convs, spectral filters as DFT matrix products: standard ops only, no FFT) with export-friendly adapter ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..optimize.kernels import TorchAdapterKernels


class ExportAdapterKernels(TorchAdapterKernels):
    """The torch provider's ops, except that the noise-weighted depthwise convs run as one static depthwise conv
    with three outputs per channel (the 3×3, 5×5 and 7×7 kernels, zero-padded to 7×7), weighted by α after it.

    The torch provider merges the three kernels into one per-sample 7×7 kernel, applied as unfold + batched dot
    (a grouped conv would need `groups = B·r`, which ONNX and TensorRT take only as a static attribute). Exported,
    that is an im2col gather and a large einsum; the static depthwise form here is one Conv that TensorRT fuses.
    Both forms are `Σ_k α_k (DW_k(F) + c_k) + S`.
    """

    @classmethod
    def adapter_spatial(cls, z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2,
                        proj, proj_bias):
        batch, _, channels = z.shape
        zf, filtered, alpha = cls.filtered_and_noise_weights(z, h, w, spectral, noise_w1, noise_b1, noise_w2,
                                                             noise_b2)
        spatial = zf[:, 1:]
        size = k7.shape[-1]
        padded = [F.pad(k.float(), [(size - k.shape[-1]) // 2] * 4) for k in (k3, k5)] + [k7.float()]
        kernels = torch.stack(padded, dim=1).reshape(3 * channels, 1, size, size)
        responses = F.conv2d(filtered, kernels, padding=size // 2, groups=channels)
        t = (responses.reshape(batch, channels, 3, h * w) * alpha[:, None, :, None]).sum(dim=2)
        t = t + (alpha @ conv_bias.float())[:, :, None]
        # The residual is the unfiltered S (with a folded per-channel filter, the convs saw S itself).
        t = t.transpose(1, 2) + spatial
        return cls.project_and_activate(zf, t, proj, proj_bias, z.dtype)


def deployable_model(config, tensors: dict, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The model to export, in eval mode on CPU (`PackageError` when the tensors do not fit the config). `dtype` is
    the storage and GEMM dtype; inputs and logits stay float32."""
    from ..optimize.model import OptimizedHTModel

    return OptimizedHTModel(config, tensors, kernels=ExportAdapterKernels(), dtype=dtype).eval()
