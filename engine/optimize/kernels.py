"""Adapter-kernel providers: the same four ops (htkernels/README.md contracts) from plain torch, Triton or CUDA, and
the block's dense layers with what precedes or follows them (`norm_linear`, `linear_act`, `linear_residual`).

Every provider implements the `AdapterKernels` protocol; the optimized model takes one as an instance
(`kernel_provider(name)` builds one from its name). Providers are looked up lazily by name so that importing this
module pulls in neither Triton nor a CUDA build. The `torch` provider uses only standard torch ops, so a model built
on it exports (`torch.export`, ONNX) and compiles (`torch.compile`) like any other module.

htkernels knows nothing of the engine and raises its own errors; `kernel_errors` turns them into the engine's where
the engine calls into it (the Triton and CUDA providers, the CUDA-graph runner), so a `Predictor` user still gets an
`InputError` or a `BackendError`.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Protocol

import torch
import torch.nn.functional as F

from htkernels.attention import sdpa_attention
from htkernels.errors import KernelError, KernelInputError
from htkernels.head_logits import head_logits_ref
from htkernels.patch_embed import patch_embed_torch

from ..errors import BackendError, InputError
from . import rewrites

KERNEL_PROVIDERS = {
    "torch": "engine.optimize.kernels:TorchAdapterKernels",
    "triton": "engine.optimize.triton_provider:TritonAdapterKernels",
    "cuda": "engine.optimize.cuda_provider:CudaAdapterKernels",
}


class AdapterKernels(Protocol):
    """The ops the optimized model runs through a provider, with the contracts of htkernels/README.md. Math in fp32
    whatever the storage dtype; outputs in the dtype of the main input."""

    def available(self, device: str) -> tuple[bool, str]:
        """`(True, detail)` when the provider can run on `device`, else `(False, why not)`."""

    def adapter_in(self, x2d, w_norm, w_raw, bias, eps):
        """`z [M, r] = LN(x2d) @ w_normᵀ + x2d @ w_rawᵀ + bias` (LN without affine, biased variance): x2d `[M, D]`,
        w_norm and w_raw `[r, D]`, bias `[r]`."""

    def adapter_spatial(self, z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                        proj_bias):
        """`g [B, 1+h·w, r]` from `z [B, 1+h·w, r]`: frequency filter (`spectral`, or none), noise weights α, the
        three α-weighted depthwise convs plus the residual, `proj`, GELU; the CLS token is `GELU(z[:, 0])`."""

    def adapter_out(self, g2d, w2, b2, residual2d):
        """`y [M, D] = residual2d + g2d @ w2ᵀ + b2`: g2d `[M, r]`, w2 `[D, r]`, b2 `[D]`, residual2d `[M, D]`."""

    def adapter_spatial_out(self, z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2,
                            proj, proj_bias, w2, b2, residual):
        """`y [B, 1+h·w, D] = adapter_out(adapter_spatial(z, ...), w2, b2, residual)`: the adapter after adapter_in,
        residual `[B, 1+h·w, D]` (a provider may fuse the two, never storing g)."""

    def adapter(self, x, h, w, w_norm, w_raw, bias, eps, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2,
                noise_b2, proj, proj_bias, w2, b2):
        """The whole adapter of a block, `x [B, 1+h·w, D]` → `y [B, 1+h·w, D]`: `adapter_in` on x, then
        `adapter_spatial_out` with x as the residual (a provider may share work between the two)."""

    def residual_adapter(self, hidden, linear, residual, h, w, w_norm, w_raw, bias, eps, spectral, k3, k5, k7,
                         conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2):
        """The end of a block with an adapter: `adapter(linear_residual(hidden, linear, residual), h, w, ...)`,
        hidden `[B, 1+h·w, K]` (fc2's input), `linear` fc2 as for `linear_residual`, residual `[B, 1+h·w, D]`, the
        adapter's arguments as for `adapter` (a provider may share work between the two, never storing x twice)."""

    def norm_linear(self, x, norm, linear, activation):
        """The block's LayerNorm and the GEMM after it, qkv (`activation` "none") and fc1 with its activation:
        `act(linear(norm(x)))`; `norm` an `nn.LayerNorm` over the last dim, `linear` as for `linear_act`."""

    def linear_act(self, x, linear, activation):
        """A dense layer and its activation: `act(linear(x))`, `activation` "gelu" (erf), "quick_gelu" or "none";
        `linear` maps the last dim (`nn.Linear`, or the int8 linear of the CPU path)."""

    def linear_residual(self, x, linear, residual):
        """The block's attention projection and fc2 with the residual add: `residual + linear(x)`."""

    def patch_embed(self, images, linear, cls_pos, patch_pos, patch):
        """The embedding before the blocks: `[CLS; linear(patches) + pos]` `[B, 1+g·g, W]` in the dtype of cls_pos,
        from images `[B, 3, S, S]` cut into `patch`-sized patches (row-major, each flattened channel, row, column;
        g = S / patch); `linear` the patch GEMM as for `linear_act`, cls_pos `[1, 1, W]` the CLS token plus its
        position embedding, patch_pos `[1, g·g, W]`."""

    def attention(self, qkv, heads):
        """The block's multi-head self-attention on its packed qkv: `[B, N, 3·H·d]` (q, k, v side by side, each
        head-major) → `[B, N, H·d]`, `softmax(q·kᵀ/√d)·v` per head, the layout the attention projection reads."""

    def head_logits(self, levels, weight, bias, h, w):
        """The seg head's tail: levels `[B, 1+h·w, K_ℓ]` (the head's hidden per level) → grid logits fp32
        `[B, C, h, w]` = their pixel rows side by side, in fp32, times `weight [C, ΣK_ℓ]`ᵀ + `bias [C]`."""

    def preprocess(self, frames, row_weights, col_weights, scale, out_dtype):
        """uint8 frames `[B, H, W]` or `[B, H, W, 3]` → `[B, 3, S_h, S_w]` of `out_dtype`: Pillow's bicubic resize
        (int32 fixed-point `row_weights [S_h, H]`, `col_weights [S_w, W]`), bit-exact, times `scale`."""


@contextlib.contextmanager
def kernel_errors():
    """Context manager and decorator: htkernels' `KernelInputError` leaves as an `InputError`, any other
    `KernelError` (Triton missing, extension not built, a failed CUDA launch) as a `BackendError`."""
    try:
        yield
    except KernelInputError as exc:
        raise InputError(str(exc)) from exc
    except KernelError as exc:
        raise BackendError(str(exc)) from exc


def get_kernels(name: str) -> type:
    """The provider class registered under `name` (import errors become a `BackendError` naming the provider)."""
    if name not in KERNEL_PROVIDERS:
        raise BackendError(f"unknown adapter-kernel provider {name!r}; expected one of {', '.join(KERNEL_PROVIDERS)}")
    module_name, class_name = KERNEL_PROVIDERS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"adapter-kernel provider {name!r} cannot be imported ({module_name}): {exc}") from exc
    return getattr(module, class_name)


def kernel_provider(name: str) -> AdapterKernels:
    """An instance of the provider registered under `name`, what `OptimizedHTModel(kernels=...)` takes."""
    return get_kernels(name)()


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """The MLP activation of a ViT block: `"gelu"` (erf) or `"quick_gelu"` (`x·σ(1.702x)`, OpenAI CLIP); `"none"`
    (qkv) returns x."""
    if activation == "none":
        return x
    return x * torch.sigmoid(1.702 * x) if activation == "quick_gelu" else F.gelu(x)


def compose_spatial_out(provider, z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2,
                        proj, proj_bias, w2, b2, residual):
    """`adapter_spatial_out` as the provider's own `adapter_spatial` then its `adapter_out`."""
    batch, tokens, r = z.shape
    g = provider.adapter_spatial(z, h, w, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2,
                                 proj, proj_bias)
    width = residual.shape[-1]
    return provider.adapter_out(g.view(-1, r), w2, b2, residual.view(-1, width)).view(batch, tokens, width)


def compose_adapter(provider, x, h, w, w_norm, w_raw, bias, eps, spectral, k3, k5, k7, conv_bias, noise_w1,
                    noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2):
    """`adapter` as the provider's own `adapter_in` then its `adapter_spatial_out`."""
    batch, tokens, width = x.shape
    z = provider.adapter_in(x.reshape(-1, width), w_norm, w_raw, bias, eps)
    return provider.adapter_spatial_out(z.view(batch, tokens, -1), h, w, spectral, k3, k5, k7, conv_bias, noise_w1,
                                        noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2, x)


def compose_residual_adapter(provider, hidden, linear, residual, h, w, w_norm, w_raw, bias, eps, spectral, k3, k5,
                             k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj, proj_bias, w2, b2):
    """`residual_adapter` as the provider's own `linear_residual` then its `adapter`."""
    x = provider.linear_residual(hidden, linear, residual)
    return provider.adapter(x, h, w, w_norm, w_raw, bias, eps, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1,
                            noise_w2, noise_b2, proj, proj_bias, w2, b2)


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
            # Made on the device itself: a CPU tensor in the graph of a GPU artifact is a mixed-device AOTInductor
            # package (engine/export/aoti.py refuses one).
            return rewrites.dft_matrices(h, w, device=device)
        if key not in cls._dft_cache:
            matrices = rewrites.dft_matrices(h, w, device=device)
            if torch.device(device).type == "cuda" and torch.cuda.is_current_stream_capturing():
                return matrices  # recorded, not computed, until a replay: this call's only (as htkernels._cache)
            cls._dft_cache[key] = matrices
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
        zf, filtered, alpha = cls.filtered_and_noise_weights(z, h, w, spectral, noise_w1, noise_b1, noise_w2,
                                                             noise_b2)
        t = cls.noise_weighted_convs(zf, filtered, alpha, spectral is not None, k3, k5, k7, conv_bias)
        return cls.project_and_activate(zf, t, proj, proj_bias, z.dtype)

    @staticmethod
    def noise_weighted_convs(zf, filtered, alpha, spectral: bool, k3, k5, k7, conv_bias):
        """The middle of `adapter_spatial`, the step each provider subclass writes in its own form:
        `T [B, h·w, r] = Σ_k α_k (DW_k(F) + c_k) + S` from fp32 `zf [B, 1+h·w, r]` (S is `zf[:, 1:]`),
        `F [B, r, h, w]` and `α [B, 3]`; `spectral` whether F is a spectral filter's output (else F is S itself).

        Here one per-sample 7×7 kernel (`rewrites.merged_depthwise_kernel`) as unfold + batched dot: a grouped conv
        would need `groups = B·r`, an int that pins the batch size in compiled and exported graphs."""
        batch, channels, h, w = filtered.shape
        kernel, conv_bias_b = rewrites.merged_depthwise_kernel(alpha, k3.float(), k5.float(), k7.float(),
                                                               conv_bias.float(), identity=not spectral)
        size = kernel.shape[-1]
        columns = F.unfold(filtered, size, padding=size // 2).view(batch, channels, size * size, h * w)
        t = torch.einsum("bckp,bck->bpc", columns, kernel.reshape(batch, channels, size * size))
        t = t + conv_bias_b[:, None, :]
        return t + zf[:, 1:] if spectral else t

    @staticmethod
    def project_and_activate(zf, t, proj, proj_bias, dtype):
        """The end of `adapter_spatial`: `GELU([CLS; (I+P)·T])` in `dtype`, from fp32 `z` and `T [B, h·w, r]`."""
        o = F.linear(t, proj.float(), proj_bias.float())
        return F.gelu(torch.cat([zf[:, :1], o], dim=1)).to(dtype)

    @staticmethod
    def adapter_out(g2d, w2, b2, residual2d):
        return torch.addmm(b2, g2d, w2.t()) + residual2d

    @staticmethod
    def head_logits(levels, weight, bias, h, w):
        return head_logits_ref(levels, weight, bias, h, w)

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

    @classmethod
    def norm_linear(cls, x, norm, linear, activation):
        """The block's LayerNorm, then qkv or fc1 and its activation: `act(linear(norm(x)))`."""
        return cls.linear_act(norm(x), linear, activation)

    @staticmethod
    def linear_act(x, linear, activation):
        """A dense layer and its activation: `act(linear(x))`; `linear` maps the last dim (`nn.Linear`, or the
        int8 linear of the CPU path)."""
        return activate(linear(x), activation)

    @staticmethod
    def linear_residual(x, linear, residual):
        """The block's attention projection and fc2 with the residual add: `residual + linear(x)`."""
        return residual + linear(x)

    @staticmethod
    def patch_embed(images, linear, cls_pos, patch_pos, patch):
        return patch_embed_torch(images, linear, cls_pos, patch_pos, patch)

    @staticmethod
    def attention(qkv, heads):
        """SDPA on head-major views of the packed qkv (its own choice of back end), then the heads side by side."""
        return sdpa_attention(qkv, heads)

    @staticmethod
    def preprocess(frames, row_weights, col_weights, scale, out_dtype):
        from htkernels.preprocess import preprocess_ref

        return preprocess_ref(frames, row_weights, col_weights, scale, out_dtype)
