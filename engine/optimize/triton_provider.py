"""`TritonAdapterKernels`: the adapter-kernel provider `kernels="triton"` (the `AdapterKernels` protocol of
`engine.optimize.kernels`) backed by the Triton ops of htkernels.

On CUDA tensors each method calls the registered `torch.ops.htkernels.*` op (so `torch.compile` and
`torch.export` see one opaque op, and CUDA graphs capture the Triton launches). On CPU tensors under
`TRITON_INTERPRET=1` it calls the Triton launchers directly: that is how CI runs the real kernels without a GPU.
htkernels' own errors leave every method as the engine's (`kernel_errors`).
"""

from __future__ import annotations

import torch

from htkernels import adapter as _adapter
from htkernels import adapter_in as _adapter_in
from htkernels import adapter_out as _adapter_out
from htkernels import adapter_spatial as _adapter_spatial
from htkernels import attention as _attention
from htkernels import head_logits as _head_logits
from htkernels import linear_act as _linear_act
from htkernels import norm_linear as _norm_linear
from htkernels import patch_embed as _patch_embed
from htkernels import preprocess as _preprocess
from htkernels import residual_adapter as _residual_adapter
from htkernels._triton import interpreting, triton

from .kernels import kernel_errors


class TritonAdapterKernels:
    """The ops of htkernels/README.md, same signatures as every other provider."""

    @classmethod
    @kernel_errors()
    def available(cls, device: str) -> tuple[bool, str]:
        if triton is None:
            return False, "Triton is not installed (pip install -c constraints.txt '.[triton]')"
        if str(device).startswith("cuda"):
            if not torch.cuda.is_available():
                return False, "no CUDA GPU visible to PyTorch"
            return True, ""
        if interpreting():
            return True, ""
        return False, f"the Triton kernels run on CUDA devices, not {device!r} (TRITON_INTERPRET=1 interprets them)"

    @staticmethod
    @kernel_errors()
    def adapter_in(x2d, w_norm, w_raw, bias, eps):
        if x2d.is_cuda:
            return torch.ops.htkernels.adapter_in(x2d, w_norm, w_raw, bias, float(eps))
        return _adapter_in.adapter_in_triton(x2d, w_norm, w_raw, bias, eps)

    @staticmethod
    @kernel_errors()
    def adapter_spatial(z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                        proj_bias):
        args = (z, int(h), int(w), spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                proj_bias)
        if z.is_cuda:
            return torch.ops.htkernels.adapter_spatial(*args)
        return _adapter_spatial.adapter_spatial_triton(*args)

    @staticmethod
    @kernel_errors()
    def adapter_spatial_out(z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                            proj_bias, w2, b2, residual):
        """adapter_spatial then adapter_out: the tuner's choice of the two kernels or the spatial kernel with
        adapter_out in its epilogue (htkernels/adapter_spatial.py)."""
        args = (z, int(h), int(w), spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                proj_bias, w2, b2, residual)
        if z.is_cuda:
            return torch.ops.htkernels.adapter_spatial_out(*args)
        return _adapter_spatial.adapter_spatial_out_triton(*args)

    @staticmethod
    @kernel_errors()
    def adapter(x, h, w, w_norm, w_raw, bias, eps, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2,
                noise_b2, proj, proj_bias, w2, b2):
        """adapter_in then adapter_spatial_out: the tuner's choice of the two ops as they are or adapter_in leaving
        the partial sums of the image mean for the spatial kernel (htkernels/adapter.py)."""
        args = (x, int(h), int(w), w_norm, w_raw, bias, float(eps), spectral, k3, k5, k7, conv_bias, noise_w1,
                noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2)
        if x.is_cuda:
            return torch.ops.htkernels.adapter(*args)
        return _adapter.adapter_triton(*args)

    @staticmethod
    @kernel_errors()
    def residual_adapter(hidden, linear, residual, h, w, w_norm, w_raw, bias, eps, spectral, k3, k5, k7, conv_bias,
                         noise_w1, noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2):
        """fc2 + residual then the adapter: the tuner's choice of the two ops or fc2's kernel running adapter_in
        on each row tile once its last column tile is stored (htkernels/residual_adapter.py)."""
        args = (hidden, linear.weight, linear.bias, residual, int(h), int(w), w_norm, w_raw, bias, float(eps),
                spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2)
        if hidden.is_cuda:
            return torch.ops.htkernels.residual_adapter(*args)
        return _residual_adapter.residual_adapter_triton(*args)

    @staticmethod
    @kernel_errors()
    def adapter_out(g2d, w2, b2, residual2d):
        if g2d.is_cuda:
            return torch.ops.htkernels.adapter_out(g2d, w2, b2, residual2d)
        return _adapter_out.adapter_out_triton(g2d, w2, b2, residual2d)

    @staticmethod
    @kernel_errors()
    def norm_linear(x, norm, linear, activation):
        """LayerNorm → qkv / fc1 (+ activation): the tuner's choice of torch's LayerNorm + `linear_act` or the kernel
        with the LayerNorm folded into the GEMM (htkernels/norm_linear.py)."""
        x2d = x.reshape(-1, x.shape[-1])
        args = (x2d, norm.weight, norm.bias, linear.weight, linear.bias, float(norm.eps), activation)
        if x2d.is_cuda:
            y = torch.ops.htkernels.norm_linear(*args)
        else:
            y = _norm_linear.norm_linear_triton(*args)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    @kernel_errors()
    def linear_act(x, linear, activation):
        """fc1 + bias + activation: the tuner's choice of cuBLAS + activation or one fused kernel."""
        x2d = x.reshape(-1, x.shape[-1])
        if x2d.is_cuda:
            y = torch.ops.htkernels.linear_act(x2d, linear.weight, linear.bias, activation)
        else:
            y = _linear_act.linear_act_triton(x2d, linear.weight, linear.bias, activation)
        return y.view(*x.shape[:-1], y.shape[-1])

    @classmethod
    @kernel_errors()
    def linear_residual(cls, x, linear, residual):
        """Attention projection / fc2 + bias + residual: the tuner's choice of cuBLAS + add or the fused
        `adapter_out` kernel (the same contract with a wide inner size)."""
        y = cls.adapter_out(x.reshape(-1, x.shape[-1]), linear.weight, linear.bias,
                            residual.reshape(-1, residual.shape[-1]))
        return y.view(residual.shape)

    @staticmethod
    @kernel_errors()
    def attention(qkv, heads):
        """Multi-head self-attention: the tuner's choice of SDPA back end (flash, memory-efficient, cuDNN, math) or
        FlashAttention-3 where installed (htkernels/attention.py)."""
        if qkv.is_cuda:
            return torch.ops.htkernels.attention(qkv, int(heads))
        return _attention.attention_torch(qkv, int(heads))

    @staticmethod
    @kernel_errors()
    def patch_embed(images, linear, cls_pos, patch_pos, patch):
        """The embedding: the tuner's choice of the unfused ops (cuBLAS GEMM) or one GEMM reading the patches from
        the image, with the bias, position embedding and CLS row in its epilogue (htkernels/patch_embed.py)."""
        args = (images, linear.weight, linear.bias, cls_pos, patch_pos, int(patch))
        if images.is_cuda:
            return torch.ops.htkernels.patch_embed(*args)
        return _patch_embed.patch_embed_triton(*args)

    @staticmethod
    @kernel_errors()
    def head_logits(levels, weight, bias, h, w):
        """The seg head's tail: the tuner's choice of torch's concatenation, fp32 copy, GEMM and transposed copy or
        one kernel reading the levels in place and storing the grid logits (htkernels/head_logits.py)."""
        if weight.is_cuda:
            return torch.ops.htkernels.head_logits(list(levels), weight, bias, int(h), int(w))
        return _head_logits.head_logits_triton(levels, weight, bias, int(h), int(w))

    @staticmethod
    @kernel_errors()
    def preprocess(frames, row_weights, col_weights, scale, out_dtype):
        if frames.is_cuda:
            return torch.ops.htkernels.preprocess(frames, row_weights, col_weights, float(scale), out_dtype)
        return _preprocess.preprocess_triton(frames, row_weights, col_weights, scale, out_dtype)
