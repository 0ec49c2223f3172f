"""Exact rewrites of the reference HT model (design card §5), one function each.

Every function here is an identity in exact arithmetic: the optimized model built from them computes the same
numbers as the reference up to float rounding, which `tests/test_optimize_rewrites.py` checks rewrite by rewrite.
Weight folds run once at load time in float64 and are stored in float32, so the folding itself adds no error
beyond one rounding per folded weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def live_blocks(layers: int, extract_layers) -> int:
    """Number of leading blocks that reach an output: blocks past the last extracted layer feed nothing."""
    last = max(extract_layers)
    if not 0 <= last < layers:
        raise ConfigError(f"extract layer {last} outside 0..{layers - 1}")
    return last + 1


def prune_dead_blocks(tensors: dict, layers: int, extract_layers) -> dict:
    """Drop the tensors of blocks past the last extracted layer (and nothing else)."""
    keep = live_blocks(layers, extract_layers)
    dead = tuple(f"backbone.blocks.{i}." for i in range(keep, layers))
    return {name: t for name, t in tensors.items() if not name.startswith(dead)}


def fold_layernorm_mix(ln_weight, ln_bias, gamma, gammax, w1, b1):
    """`(LN(x)·γ + x·γx)·W1ᵀ + b1` → `normalize(x)·w_normᵀ + x·w_rawᵀ + bias` (htkernels adapter_in)."""
    w1 = w1.double()
    w_norm = w1 * (ln_weight.double() * gamma.double())[None, :]
    w_raw = w1 * gammax.double()[None, :]
    bias = w1 @ (ln_bias.double() * gamma.double()) + b1.double()
    return w_norm.float(), w_raw.float(), bias.float()


def fold_channel_filter(phi, k3, k5, k7, noise_w1):
    """A per-channel filter is `F = φ·S` exactly (rfft2/irfft2 of a per-channel scale), so it moves into the
    depthwise kernels (`φ ⊙ K`) and into the noise estimator's first 1×1 conv (`Wa·diag(φ)`, the mean is linear)."""
    phi = phi.double()
    kernels = tuple((k.double() * phi[:, None, None]).float() for k in (k3, k5, k7))
    return (*kernels, (noise_w1.double() * phi[None, :]).float())


def fold_projector_identity(proj, proj_bias):
    """`T + P(T)` with `P(T) = proj·T + b` is `(I + proj)·T + b`."""
    eye = torch.eye(proj.shape[0], dtype=torch.float64)
    return (eye + proj.double()).float(), proj_bias.float().clone()


def padded_depthwise_kernels(k3, k5, k7) -> list:
    """The three depthwise kernels `[r,k,k]` in fp32, each zero-padded around its centre to the largest one's size."""
    size = k7.shape[-1]
    return [F.pad(k.float(), [(size - k.shape[-1]) // 2] * 4) for k in (k3, k5, k7)]


def merged_depthwise_kernel(alpha, k3, k5, k7, conv_bias, identity: bool):
    """`Σ_k α_k (DW_k(F) + c_k) [+ F]` as one depthwise 7×7 conv per sample: kernel `Σ α_k pad(K_k) [+ δ]`.

    alpha `[B,3]`, kernels `[r,k,k]`, conv_bias `[3,r]` → kernel `[B,r,7,7]`, bias `[B,r]`. `identity` adds the
    centre tap δ, exact when the residual equals the conv input (per-channel filter folded into the kernels)."""
    size = k7.shape[-1]
    kernel = alpha[:, 2, None, None, None] * k7[None]
    for index, small in ((0, k3), (1, k5)):
        pad = (size - small.shape[-1]) // 2
        kernel = kernel + alpha[:, index, None, None, None] * F.pad(small, (pad, pad, pad, pad))[None]
    if identity:
        # Built on the device by padding a 1×1 one (an indexed scalar store would copy from the host, which a
        # CUDA graph capture refuses).
        centre = F.pad(torch.ones((1, 1), dtype=kernel.dtype, device=kernel.device), (size // 2,) * 4)
        kernel = kernel + centre
    bias = alpha @ conv_bias
    return kernel, bias


def dft_matrices(h: int, w: int, dtype=torch.float32, device=None):
    """Real matrices of the 2-D real DFT on an `h×w` grid (half spectrum of `w2 = w//2+1` columns) and its inverse.

    `cw, sw [w, w2]` and `ch, sh [h, h]` hold cos and sin of the DFT angles (forward kernel `cos - i·sin`);
    `icw, isw [w2, w]` are the inverse along w with `irfft`'s Hermitian column weights (1, 2, …, 2[, 1]) and `1/w`
    folded in (the imaginary parts of the self-conjugate columns drop out, as in `irfft2`).

    Made on `device` from factory ops alone (no in-place scalar writes): traced by torch.export, they then add no
    tensor on another device and no lifted constant to the graph of a GPU artifact."""
    w2 = w // 2 + 1
    f64 = dict(dtype=torch.float64, device=device)
    y = torch.arange(h, **f64)
    x = torch.arange(w, **f64)
    k = torch.arange(w2, **f64)
    angle_h = 2 * math.pi * torch.outer(y, y) / h
    angle_w = 2 * math.pi * torch.outer(x, k) / w  # [w, w2]
    # 1 for the self-conjugate columns (0, and w/2 for even w), 2 for the others.
    self_conjugate = (k == 0) | (k * 2 == w)
    weight = 2.0 - self_conjugate.to(torch.float64)
    mats = {
        "cw": torch.cos(angle_w), "sw": torch.sin(angle_w),
        "ch": torch.cos(angle_h), "sh": torch.sin(angle_h),
        "icw": (torch.cos(angle_w).t() * weight[:, None]) / w, "isw": (torch.sin(angle_w).t() * weight[:, None]) / w,
    }
    return {name: m.to(dtype) for name, m in mats.items()}


def spectral_filter_dft(s, spectral, mats):
    """`irfft2(rfft2(S) ⊙ φ, s=(h,w))` with small real matmuls. s `[..., h, w]`, spectral `[r, h, w2, 2]`
    broadcasting against `s[..., h, w2]`."""
    h = s.shape[-2]
    cw, sw, ch, sh, icw, isw = (mats[n] for n in ("cw", "sw", "ch", "sh", "icw", "isw"))
    # rfft along w: S·(Cw - i·Sw)
    ar, ai = s @ cw, -(s @ sw)
    # fft along h: (Ch - i·Sh)·A
    xr = ch @ ar + sh @ ai
    xi = ch @ ai - sh @ ar
    phi_r, phi_i = spectral[..., 0], spectral[..., 1]
    yr = xr * phi_r - xi * phi_i
    yi = xr * phi_i + xi * phi_r
    # ifft along h: (Ch + i·Sh)·Y / h  (Ch, Sh symmetric)
    br = (ch @ yr - sh @ yi) / h
    bi = (ch @ yi + sh @ yr) / h
    # c2r along w: Σ_k weight_k Re(B_k·e^{+2πikx/w}) / w
    return br @ icw - bi @ isw


def spectral_filter_dc_gain(spectral):
    """The spatial mean of the filtered map is `Re φ[:,0,0] · mean(S)` (the DC bin passes through the filter)."""
    return spectral[:, 0, 0, 0]


def seg_conv_before_upsample(maps, out_weight, out_bias, size: int):
    """`conv1x1(upsample(m))` = `upsample(conv1x1(m))`: both are linear and the bilinear weights of every output
    pixel sum to 1, so the bias passes unchanged; the conv then runs on h·w pixels instead of size²."""
    logits = F.conv2d(maps, out_weight.reshape(out_weight.shape[0], -1, 1, 1), out_bias)
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def fold_head_output(level_weights, level_biases, out_weight, out_bias):
    """`Wo·(Σ_ℓ (W3_ℓ a_ℓ + b3_ℓ)) + bo` = `Σ_ℓ (Wo·W3_ℓ) a_ℓ + (Wo·Σ_ℓ b3_ℓ + bo)`: the head's output layer
    (seg 1×1 conv, cls linear or the first linear of the OpenAI cls MLP) folds into each level's last linear."""
    wo = out_weight.double().reshape(out_weight.shape[0], -1)
    weights = [(wo @ w.double()).float() for w in level_weights]
    bias = wo @ torch.stack([b.double() for b in level_biases]).sum(0) + out_bias.double()
    return weights, bias.float()


@dataclass
class FoldedAdapter:
    """One adapter's tensors in the argument names of the htkernels ops (htkernels/README.md)."""

    w_norm: torch.Tensor
    w_raw: torch.Tensor
    bias: torch.Tensor
    eps: float
    spectral: torch.Tensor | None
    k3: torch.Tensor
    k5: torch.Tensor
    k7: torch.Tensor
    conv_bias: torch.Tensor
    noise_w1: torch.Tensor
    noise_b1: torch.Tensor
    noise_w2: torch.Tensor
    noise_b2: torch.Tensor
    proj: torch.Tensor
    proj_bias: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor


def fold_adapter(adapter_tensors: dict, filter_kind: str, ln_eps: float) -> FoldedAdapter:
    """Fold one adapter's reference tensors (keys as in `HTAdapter.state_dict()`) into the kernels' arguments."""
    t = adapter_tensors
    w_norm, w_raw, bias = fold_layernorm_mix(t["norm.weight"], t["norm.bias"], t["gamma"], t["gammax"],
                                             t["project1.weight"], t["project1.bias"])
    k3, k5, k7 = (t[f"spatial.dw{k}.weight"][:, 0].float() for k in (3, 5, 7))
    noise_w1 = t["spatial.noise1.weight"][:, :, 0, 0].float()
    phi = t["spatial.freq_filter"]
    if filter_kind == "channel":
        k3, k5, k7, noise_w1 = fold_channel_filter(phi, k3, k5, k7, noise_w1)
        spectral = None
    elif filter_kind == "spectral":
        spectral = phi.float().contiguous()
    else:
        raise ConfigError(f"unknown filter kind {filter_kind!r}; expected 'channel' or 'spectral'")
    proj, proj_bias = fold_projector_identity(t["spatial.projector.weight"][:, :, 0, 0], t["spatial.projector.bias"])
    conv_bias = torch.stack([t[f"spatial.dw{k}.bias"].float() for k in (3, 5, 7)])
    return FoldedAdapter(
        w_norm=w_norm, w_raw=w_raw, bias=bias, eps=float(ln_eps), spectral=spectral,
        k3=k3.contiguous(), k5=k5.contiguous(), k7=k7.contiguous(), conv_bias=conv_bias.contiguous(),
        noise_w1=noise_w1.contiguous(), noise_b1=t["spatial.noise1.bias"].float().clone(),
        noise_w2=t["spatial.noise2.weight"][:, :, 0, 0].float().contiguous(),
        noise_b2=t["spatial.noise2.bias"].float().clone(),
        proj=proj.contiguous(), proj_bias=proj_bias,
        w2=t["project2.weight"].float().contiguous(), b2=t["project2.bias"].float().clone(),
    )
