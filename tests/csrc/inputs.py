"""Random inputs of the CUDA op tests, and the references evaluated on CPU whatever device the inputs are on."""

from __future__ import annotations

import numpy as np
import torch

from engine.preprocess import pil_resize_matrix
from htkernels.adapter_spatial import adapter_spatial_ref

PARAM_NAMES = ("k3", "k5", "k7", "conv_bias", "noise_w1", "noise_b1", "noise_w2", "noise_b2", "proj", "proj_bias")


def spatial_inputs(batch, h, w, channels, spectral, dtype=torch.float32, device="cpu", seed=0):
    """z, the spectral filter (or None) and the adapter parameters, scaled so every term of g is of order one."""
    gen = torch.Generator().manual_seed(seed)
    hidden = max(channels // 4, 1)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    params = dict(k3=randn(channels, 3, 3, scale=0.3), k5=randn(channels, 5, 5, scale=0.2),
                  k7=randn(channels, 7, 7, scale=0.15), conv_bias=randn(3, channels, scale=0.1),
                  noise_w1=randn(hidden, channels, scale=channels ** -0.5), noise_b1=randn(hidden, scale=0.1),
                  noise_w2=randn(3, hidden, scale=2.0), noise_b2=randn(3, scale=0.5),
                  proj=torch.eye(channels) + randn(channels, channels, scale=channels ** -0.5),
                  proj_bias=randn(channels, scale=0.1))
    filt = randn(channels, h, w // 2 + 1, 2, scale=0.7).to(device) if spectral else None
    z = randn(batch, 1 + h * w, channels).to(dtype).to(device)
    return z, filt, {name: value.to(device) for name, value in params.items()}


def reference_spatial(z, h, w, spectral, params):
    cpu = {name: value.cpu() for name, value in params.items()}
    return adapter_spatial_ref(z.cpu(), h, w, None if spectral is None else spectral.cpu(),
                               *(cpu[name] for name in PARAM_NAMES))


def pil_weights(in_size, out_size, device="cpu"):
    return torch.from_numpy(pil_resize_matrix(in_size, out_size).astype(np.int32)).to(device)


def random_frames(batch, height, width, rgb, seed=0, device="cpu"):
    shape = (batch, height, width, 3) if rgb else (batch, height, width)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)).to(device)
