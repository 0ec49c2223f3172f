"""Seeded random inputs of the htkernels ops, for their tests and the benchmarks (one builder each, so a benchmark
times the inputs the tests check), the spatial reference evaluated on CPU, and the one tolerance table.

Inputs are drawn on CPU from a seeded generator and then moved, so a seed gives the same numbers on every device.
Nothing here touches a GPU at import, and nothing imports the engine (htkernels is the lowest layer). The PIL
resize weights of `preprocess` come from the engine (`engine.bench.inputs.pil_weights`).
"""

from __future__ import annotations

import torch

from .adapter_spatial import adapter_spatial_ref

# The one tolerance table: the largest relative error (`engine.bench.measure.relative_error`: max|a-b| / max|b|) of
# a fast path or an independent formulation against the reference at each precision. The test suite reads it through
# tests/tolerances.py; it lives here so that the benchmarks' and the sanitizer driver's checks hold the same bounds.
RELATIVE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.bfloat16: 3e-2,
    torch.float16: 5e-3,
    # int8 Q/DQ graphs: per-channel symmetric weights, per-tensor activations calibrated by min/max.
    torch.int8: 1e-1,
}
# The adapter_spatial parameters after z, h, w and the filter, in the order the ops take them.
PARAM_NAMES = ("k3", "k5", "k7", "conv_bias", "noise_w1", "noise_b1", "noise_w2", "noise_b2", "proj", "proj_bias")
# What each `adapter_inputs` op computes and the arguments it returns.
ADAPTER_OPS = ("adapter_in", "adapter_out", "adapter_spatial", "linear_act", "norm_linear")


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
    """`adapter_spatial_ref` on CPU copies of `spatial_inputs`' tensors, whatever device they are on."""
    cpu = {name: value.cpu() for name, value in params.items()}
    return adapter_spatial_ref(z.cpu(), h, w, None if spectral is None else spectral.cpu(),
                               *(cpu[name] for name in PARAM_NAMES))


def random_frames(batch, height, width, rgb, seed=0, device="cpu"):
    """uint8 frames `[B,H,W]` (or `[B,H,W,3]` with `rgb`), uniform over 0..255."""
    shape = (batch, height, width, 3) if rgb else (batch, height, width)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)).to(device)


def adapter_inputs(op: str, batch: int, dtype, device, width: int, channels: int, grid: int, spectral: bool = False,
                   seed: int = 0) -> tuple:
    """The positional arguments of `torch.ops.htkernels.<op>` for `batch` images of `1 + grid²` tokens of `width`
    features and an adapter bottleneck of `channels` (the model's shapes: width 768, channels 64, grid 14).

    `adapter_in`: `(x, w_norm, w_raw, bias, eps)`; `adapter_out`: `(g, w2, b2, residual)`; `linear_act` (a block's
    fc1 + GELU): `(x, weight, bias, "gelu")`; `norm_linear` (a block's LayerNorm, fc1 + GELU): `(x, norm_weight,
    norm_bias, weight, bias, eps, "gelu")`; `adapter_spatial`: `(z, grid, grid, filter, *PARAM_NAMES)` with the
    filter spectral or None and the spatial parameters in fp32 (as the optimized model keeps them).
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dt)

    tokens = 1 + grid * grid
    rows = batch * tokens
    if op == "adapter_in":
        return (randn(rows, width), randn(channels, width, scale=0.05), randn(channels, width, scale=0.05),
                randn(channels), 1e-5)
    if op == "adapter_out":
        return randn(rows, channels), randn(width, channels, scale=0.1), randn(width), randn(rows, width)
    if op == "linear_act":
        return randn(rows, width), randn(4 * width, width, scale=width ** -0.5), randn(4 * width), "gelu"
    if op == "norm_linear":
        return (randn(rows, width), 1.0 + randn(width, scale=0.2), randn(width, scale=0.2),
                randn(4 * width, width, scale=width ** -0.5), randn(4 * width), 1e-6, "gelu")
    if op == "adapter_spatial":
        f32 = torch.float32
        reduced = channels // 4
        filt = randn(channels, grid, grid // 2 + 1, 2, dt=f32) if spectral else None
        return (randn(batch, tokens, channels), grid, grid, filt, randn(channels, 3, 3, dt=f32),
                randn(channels, 5, 5, dt=f32), randn(channels, 7, 7, dt=f32), randn(3, channels, dt=f32),
                randn(reduced, channels, dt=f32), randn(reduced, dt=f32), randn(3, reduced, dt=f32), randn(3, dt=f32),
                randn(channels, channels, scale=0.1, dt=f32), randn(channels, dt=f32))
    raise ValueError(f"no inputs for op {op!r}; expected one of {', '.join(ADAPTER_OPS)}")


def adapter_block_inputs(dtype, device, width: int, channels: int, grid: int) -> tuple:
    """Batch-1 inputs of one adapter: adapter_in's `(x, w_norm, w_raw, bias, eps)`, adapter_spatial's arguments
    (z first) and adapter_out's `(w2, b2)`."""
    spatial = adapter_inputs("adapter_spatial", 1, dtype, device, width, channels, grid)
    _, w2, b2, _ = adapter_inputs("adapter_out", 1, dtype, device, width, channels, grid)
    return adapter_inputs("adapter_in", 1, dtype, device, width, channels, grid), spatial, (w2, b2)


def adapter_block(inputs: tuple, adapter_in, adapter_spatial, adapter_out):
    """The adapter of `adapter_block_inputs` as one call: adapter_in → adapter_spatial → adapter_out (+ residual x),
    with each stage's implementation passed in (so one provider's kernels can be mixed with another's)."""
    (x, w_norm, w_raw, bias, eps), spatial, (w2, b2) = inputs
    z_shape = spatial[0].shape

    def run():
        z = adapter_in(x, w_norm, w_raw, bias, eps)
        g = adapter_spatial(z.view(z_shape), *spatial[1:])
        return adapter_out(g.view(-1, z_shape[-1]), w2, b2, x)

    return run
