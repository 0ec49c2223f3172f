"""The HT adapter (design card §1), written plainly: this is the ground truth the fast paths are tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialPart(nn.Module):
    """Frequency filter → noise-weighted multi-scale depthwise convs + unfiltered residual → `T + P(T)`.

    `freq_filter` is either one real number per channel (`[r]`, the authors' checkpoints) or a spectral filter
    `[r, h, w//2+1, 2]` (real and imaginary parts) applied to `rfft2` of each channel.
    """

    def __init__(self, channels: int, filter_kind: str, grid: int):
        super().__init__()
        self.filter_kind = filter_kind
        if filter_kind == "channel":
            self.freq_filter = nn.Parameter(torch.ones(channels))
        else:
            spectral = torch.zeros(channels, grid, grid // 2 + 1, 2)
            spectral[..., 0] = 1.0
            self.freq_filter = nn.Parameter(spectral)
        self.dw3 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.dw5 = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.dw7 = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.noise1 = nn.Conv2d(channels, channels // 4, 1)
        self.noise2 = nn.Conv2d(channels // 4, 3, 1)
        self.projector = nn.Conv2d(channels, channels, 1)

    def frequency_filter(self, s: torch.Tensor) -> torch.Tensor:
        height, width = s.shape[-2:]
        spectrum = torch.fft.rfft2(s.float(), dim=(-2, -1), norm="backward")
        if self.filter_kind == "channel":
            phi = self.freq_filter.float().view(-1, 1, 1)
        else:
            phi = torch.view_as_complex(self.freq_filter.float().contiguous())
        return torch.fft.irfft2(spectrum * phi, s=(height, width), dim=(-2, -1), norm="backward").to(s.dtype)

    def noise_weights(self, filtered: torch.Tensor) -> torch.Tensor:
        pooled = filtered.mean(dim=(-2, -1), keepdim=True)
        return torch.softmax(self.noise2(F.relu(self.noise1(pooled))), dim=1)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        filtered = self.frequency_filter(s)
        alpha = self.noise_weights(filtered)
        t = alpha[:, 0:1] * self.dw3(filtered) + alpha[:, 1:2] * self.dw5(filtered) + alpha[:, 2:3] * self.dw7(filtered)
        t = t + s
        return t + self.projector(t)


class HTAdapter(nn.Module):
    """`y = x + W2·GELU(spatial(W1·(LN(x)·γ + x·γx) + b1)) + b2`, CLS token passing the spatial part unchanged."""

    def __init__(self, width: int, bottleneck: int, filter_kind: str, grid: int, ln_eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=ln_eps)
        self.gamma = nn.Parameter(torch.full((width,), 1e-6))
        self.gammax = nn.Parameter(torch.ones(width))
        self.project1 = nn.Linear(width, bottleneck)
        # The token grid is fixed by the config; kept as an int so a tracer (TorchScript, OpenVINO's frontend) sees a
        # constant, not arithmetic on a traced size.
        self.grid = grid
        self.spatial = SpatialPart(bottleneck, filter_kind, grid)
        self.project2 = nn.Linear(bottleneck, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, grid = x.shape[0], self.grid
        mixed = self.norm(x) * self.gamma + x * self.gammax
        z = self.project1(mixed)
        cls, spatial = z[:, :1], z[:, 1:]
        s = spatial.transpose(1, 2).reshape(batch, -1, grid, grid)
        o = self.spatial(s).reshape(batch, -1, grid * grid).transpose(1, 2)
        z = torch.cat([cls, o], dim=1)
        return x + self.project2(F.gelu(z))
