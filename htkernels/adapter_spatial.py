"""`adapter_spatial`: the whole spatial part of the HT adapter per image (see htkernels/README.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def adapter_spatial_ref(z, h: int, w: int, spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2,
                        proj, proj_bias) -> torch.Tensor:
    """z `[B,1+h·w,r]` → `g [B,1+h·w,r]`: filter, noise weights, 3 depthwise convs + residual, `(I+P)`, GELU."""
    batch, tokens, channels = z.shape
    if tokens != 1 + h * w:
        raise ValueError(f"adapter_spatial: z has {tokens} tokens, expected 1 + {h}*{w} = {1 + h * w}")
    zf = z.float()
    s = zf[:, 1:].transpose(1, 2).reshape(batch, channels, h, w)
    if spectral is None:
        filtered = s
    else:
        phi = torch.view_as_complex(spectral.float().contiguous())
        filtered = torch.fft.irfft2(torch.fft.rfft2(s) * phi, s=(h, w))
    pooled = filtered.mean(dim=(2, 3))
    hidden = F.relu(pooled @ noise_w1.float().t() + noise_b1.float())
    alpha = torch.softmax(hidden @ noise_w2.float().t() + noise_b2.float(), dim=-1)
    t = s.clone()
    for index, kernel in enumerate((k3, k5, k7)):
        size = kernel.shape[-1]
        conv = F.conv2d(filtered, kernel.float().reshape(channels, 1, size, size), conv_bias[index].float(),
                        padding=size // 2, groups=channels)
        t = t + alpha[:, index, None, None, None] * conv
    o = torch.einsum("oc,bchw->bohw", proj.float(), t) + proj_bias.float()[None, :, None, None]
    spatial = o.reshape(batch, channels, h * w).transpose(1, 2)
    return F.gelu(torch.cat([zf[:, :1], spatial], dim=1)).to(z.dtype)
