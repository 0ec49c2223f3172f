"""Adapter-kernel providers: the same four ops (htkernels/README.md contracts) from plain torch, Triton or CUDA, and
the block's two dense layers with what follows them (`linear_act`, `linear_residual`).

Providers are looked up lazily by name so that importing this module pulls in neither Triton nor a CUDA build.
The `torch` provider uses only standard torch ops, so a model built on it exports (`torch.export`, ONNX) and
compiles (`torch.compile`) like any other module.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from ..errors import BackendError
from . import rewrites

KERNEL_PROVIDERS = {
    "torch": "engine.optimize.kernels:TorchAdapterKernels",
    "triton": "htkernels.triton_provider:TritonAdapterKernels",
    "cuda": "htkernels.cuda_provider:CudaAdapterKernels",
}


def get_kernels(name: str):
    """The provider class registered under `name` (import errors become a `BackendError` naming the provider)."""
    if name not in KERNEL_PROVIDERS:
        raise BackendError(f"unknown adapter-kernel provider {name!r}; expected one of {', '.join(KERNEL_PROVIDERS)}")
    module_name, class_name = KERNEL_PROVIDERS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"adapter-kernel provider {name!r} cannot be imported ({module_name}): {exc}") from exc
    return getattr(module, class_name)


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """The MLP activation of a ViT block: `"gelu"` (erf) or `"quick_gelu"` (`x·σ(1.702x)`, OpenAI CLIP)."""
    return x * torch.sigmoid(1.702 * x) if activation == "quick_gelu" else F.gelu(x)


class TorchAdapterKernels:
    """Reference-exact adapter ops in standard torch ops, with the exact rewrites of `rewrites` applied:
    the three depthwise convs (+ residual when the filter was folded away) as one per-sample 7×7 depthwise conv,
    spectral filters as 14×14 DFT matrix products. Small bottleneck math runs in fp32 whatever the storage dtype."""

    _dft_cache: dict = {}

    @classmethod
    def available(cls, device: str) -> tuple[bool, str]:
        return True, ""

    @staticmethod
    def adapter_in(x2d, w_norm, w_raw, bias, eps):
        normed = F.layer_norm(x2d, (x2d.shape[-1],), eps=eps)
        return torch.addmm(bias, normed, w_norm.t()) + x2d @ w_raw.t()

    @classmethod
    def _dft(cls, h: int, w: int, device) -> dict:
        key = (h, w, str(device))
        if torch.compiler.is_compiling():
            # Tensors made while tracing are fake or symbolic: never cache them (the compiler folds these anyway).
            return {n: m.to(device) for n, m in rewrites.dft_matrices(h, w).items()}
        if key not in cls._dft_cache:
            cls._dft_cache[key] = {n: m.to(device) for n, m in rewrites.dft_matrices(h, w).items()}
        return cls._dft_cache[key]

    @classmethod
    def filtered_and_noise_weights(cls, z, h, w, spectral, noise_w1, noise_b1, noise_w2, noise_b2):
        """`(z in fp32, F [B,r,h,w], α [B,3])`: the frequency filter and the noise estimator of `adapter_spatial`."""
        batch, _, channels = z.shape
        zf = z.float()
        s = zf[:, 1:].transpose(1, 2).reshape(batch, channels, h, w)
        if spectral is None:
            filtered = s
        else:
            filtered = rewrites.spectral_filter_dft(s, spectral.float(), cls._dft(h, w, z.device))
        pooled = filtered.mean(dim=(2, 3))
        hidden = torch.relu(F.linear(pooled, noise_w1.float(), noise_b1.float()))
        alpha = torch.softmax(F.linear(hidden, noise_w2.float(), noise_b2.float()), dim=-1)
        return zf, filtered, alpha

    @classmethod
    def adapter_spatial(cls, z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2,
                        proj, proj_bias):
        batch, _, channels = z.shape
        zf, filtered, alpha = cls.filtered_and_noise_weights(z, h, w, spectral, noise_w1, noise_b1, noise_w2,
                                                             noise_b2)
        kernel, conv_bias_b = rewrites.merged_depthwise_kernel(alpha, k3.float(), k5.float(), k7.float(),
                                                               conv_bias.float(), identity=spectral is None)
        # The per-sample depthwise conv as unfold + batched dot: a grouped conv would need `groups = B·r`, an int
        # that pins the batch size in compiled and exported graphs.
        size = kernel.shape[-1]
        columns = F.unfold(filtered, size, padding=size // 2).view(batch, channels, size * size, h * w)
        t = torch.einsum("bckp,bck->bpc", columns, kernel.reshape(batch, channels, size * size))
        t = t + conv_bias_b[:, None, :]
        if spectral is not None:
            t = t + zf[:, 1:]
        return cls.project_and_activate(zf, t, proj, proj_bias, z.dtype)

    @staticmethod
    def project_and_activate(zf, t, proj, proj_bias, dtype):
        """The end of `adapter_spatial`: `GELU([CLS; (I+P)·T])` in `dtype`, from fp32 `z` and `T [B, h·w, r]`."""
        o = F.linear(t, proj.float(), proj_bias.float())
        return F.gelu(torch.cat([zf[:, :1], o], dim=1)).to(dtype)

    @staticmethod
    def adapter_out(g2d, w2, b2, residual2d):
        return torch.addmm(b2, g2d, w2.t()) + residual2d

    @staticmethod
    def linear_act(x, linear, activation):
        """The block's fc1 and its activation: `act(linear(x))`; `linear` maps the last dim (`nn.Linear`, or the
        int8 linear of the CPU path)."""
        return activate(linear(x), activation)

    @staticmethod
    def linear_residual(x, linear, residual):
        """The block's attention projection and fc2 with the residual add: `residual + linear(x)`."""
        return residual + linear(x)

    @staticmethod
    def preprocess(frames, row_weights, col_weights, scale, out_dtype):
        from htkernels.preprocess import preprocess_ref

        return preprocess_ref(frames, row_weights, col_weights, scale, out_dtype)
