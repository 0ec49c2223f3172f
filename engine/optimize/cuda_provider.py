"""`CudaAdapterKernels`: the adapter-kernel provider `kernels="cuda"` of the optimized model (the `AdapterKernels`
protocol of `engine.optimize.kernels`). `adapter_spatial` and `preprocess` run the CUDA C++ kernels of csrc/;
`adapter_in` and `adapter_out` are the torch provider's GEMMs (cuBLAS in the model dtype, fp32 accumulation)."""

from __future__ import annotations

import torch

from htkernels import cuda_ops

from .kernels import (
    TorchAdapterKernels,
    compose_adapter,
    compose_residual_adapter,
    compose_spatial_out,
    kernel_errors,
)


class CudaAdapterKernels:
    """The CUDA C++ `adapter_spatial` and `preprocess`, the torch provider's GEMMs; htkernels' errors leave the
    kernels' methods as the engine's (`kernel_errors`)."""

    @classmethod
    @kernel_errors()
    def available(cls, device: str) -> tuple[bool, str]:
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError) as exc:
            return False, f"cannot read device {device!r}: {exc}"
        if kind != "cuda":
            return False, f"the CUDA C++ kernels run on CUDA devices only, not {device!r}"
        built, reason = cuda_ops.extension_status()
        if not built:
            return False, reason
        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)"
        return True, reason

    def adapter_in(self, x2d, w_norm, w_raw, bias, eps):
        return TorchAdapterKernels.adapter_in(x2d, w_norm, w_raw, bias, eps)

    @kernel_errors()
    def adapter_spatial(self, z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                        proj_bias):
        return cuda_ops.adapter_spatial(z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2,
                                        noise_b2, proj, proj_bias)

    def adapter_out(self, g2d, w2, b2, residual2d):
        return TorchAdapterKernels.adapter_out(g2d, w2, b2, residual2d)

    def adapter_spatial_out(self, z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2,
                            proj, proj_bias, w2, b2, residual):
        return compose_spatial_out(self, z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2,
                                   noise_b2, proj, proj_bias, w2, b2, residual)

    def adapter(self, x, h, w, w_norm, w_raw, bias, eps, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2,
                noise_b2, proj, proj_bias, w2, b2):
        return compose_adapter(self, x, h, w, w_norm, w_raw, bias, eps, spectral, k3, k5, k7, conv_bias, noise_w1,
                               noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2)

    def residual_adapter(self, hidden, linear, residual, h, w, w_norm, w_raw, bias, eps, spectral, k3, k5, k7,
                         conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2):
        return compose_residual_adapter(self, hidden, linear, residual, h, w, w_norm, w_raw, bias, eps, spectral, k3,
                                        k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj, proj_bias,
                                        w2, b2)

    def norm_linear(self, x, norm, linear, activation):
        return TorchAdapterKernels.norm_linear(x, norm, linear, activation)

    def head_logits(self, levels, weight, bias, h, w):
        return TorchAdapterKernels.head_logits(levels, weight, bias, h, w)

    def linear_act(self, x, linear, activation):
        return TorchAdapterKernels.linear_act(x, linear, activation)

    def linear_residual(self, x, linear, residual):
        return TorchAdapterKernels.linear_residual(x, linear, residual)

    def attention(self, qkv, heads):
        return TorchAdapterKernels.attention(qkv, heads)

    def patch_embed(self, images, linear, cls_pos, patch_pos, patch):
        return TorchAdapterKernels.patch_embed(images, linear, cls_pos, patch_pos, patch)

    @kernel_errors()
    def preprocess(self, frames, row_weights, col_weights, scale, out_dtype):
        return cuda_ops.preprocess(frames, row_weights, col_weights, scale, out_dtype)
