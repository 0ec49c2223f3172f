"""The adapter-kernel provider of the CPU path: the torch provider's math in the forms inductor's C++ backend
runs fastest.

- `noise_weighted_convs` (the middle of `adapter_spatial`): the noise-weighted depthwise convs as a sum of 49 shifted, channels-last slices (`[B, h, w, r]`,
  the layout `z` already has, with r innermost: one vectorized loop), the per-sample kernel `Σ_k α_k pad(K_k)` made
  by a `[B,3]·[3, 49·r]` matmul so that it is computed once, not inside the loop. The torch provider's unfold + batched
  dot is one badly vectorized loop in inductor's C++ (the kernel merge inlined into every tap). One block's
  `adapter_spatial`, compiled, both providers: `benchmarks/bench_cpu_block.py` (section `spatial`,
  `benchmarks/results/cpu-block.json`). Eager (`HT_ENGINE_COMPILE=0`) the 49 taps are about 100 small ops per
  adapter; the whole bf16 forward measured 46.2 ms against 47.2 with the torch provider's form (2-core AMX Xeon).
- `linear_act`: fc1's GELU in oneDNN's GEMM epilogue where the layer is a `OneDNNLinear` (engine.optimize.onednn).

The identity tap (a folded per-channel filter, where the residual equals the conv input) is the unshifted slice
itself, exact as in `rewrites.merged_depthwise_kernel`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .kernels import TorchAdapterKernels
from .onednn import POST_OPS, OneDNNLinear
from .rewrites import padded_depthwise_kernels


def stacked_kernels(k3, k5, k7) -> torch.Tensor:
    """The three depthwise kernels `[r,k,k]`, zero-padded to the largest size `s`, as `[3, s·s·r]` (tap-major,
    channel innermost): the matrix that `α [B,3]` multiplies into the per-sample channels-last kernel."""
    return torch.stack(padded_depthwise_kernels(k3, k5, k7)).permute(0, 2, 3, 1).reshape(3, -1)


def depthwise_channels_last(filtered: torch.Tensor, kernel: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """`start + Σ_taps shift(filtered) · kernel[tap]`: `filtered [B, h, w, r]`, `kernel [B, s, s, r]` (odd s, zero
    padding), `start` broadcastable to `[B, h, w, r]`."""
    _, h, w, _ = filtered.shape
    size = kernel.shape[1]
    pad = size // 2
    padded = F.pad(filtered, (0, 0, pad, pad, pad, pad))
    total = start
    for dy in range(size):
        for dx in range(size):
            total = total + padded[:, dy:dy + h, dx:dx + w, :] * kernel[:, dy, dx, None, None, :]
    return total


class CpuAdapterKernels(TorchAdapterKernels):
    """`TorchAdapterKernels` with the CPU forms of the module docstring; every other op is the torch provider's."""

    @staticmethod
    def noise_weighted_convs(zf, filtered, alpha, spectral: bool, k3, k5, k7, conv_bias):
        batch, channels, h, w = filtered.shape
        size = k7.shape[-1]
        kernel = (alpha @ stacked_kernels(k3, k5, k7)).view(batch, size, size, channels)
        bias = alpha @ conv_bias.float()
        filtered = filtered.permute(0, 2, 3, 1)
        # Identity tap (folded per-channel filter) or the unfiltered residual S (spectral filter).
        residual = zf[:, 1:].view(batch, h, w, channels) if spectral else filtered
        t = depthwise_channels_last(filtered, kernel, residual + bias[:, None, None, :])
        return t.reshape(batch, h * w, channels)

    @staticmethod
    def linear_act(x, linear, activation):
        if isinstance(linear, OneDNNLinear) and activation in POST_OPS:
            return linear(x, activation)
        return TorchAdapterKernels.linear_act(x, linear, activation)
