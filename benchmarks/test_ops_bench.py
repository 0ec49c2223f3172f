"""Op micro-benchmarks, providers side by side: `pytest benchmarks/ --benchmark-only` (needs `.[bench]`).

Groups (one table each): the whole adapter, its spatial part, frame preprocessing and the three-level head, at
full ViT-B/16 size (D=768, r=64, 14×14 grid), per batch size. Providers in each group:
- `reference`: the eager reference module/function (engine.model, engine.preprocess),
- `compiled`: `torch.compile` of the reference,
- `ours-<kernels>`: the engine's fast path (engine.optimize: folded tensors through a kernel provider; the
  `triton` provider where CUDA and Triton are there), and `ours-torch+compile` where it compiles.
Every provider is checked against the reference on the same inputs before it is timed, so a fast wrong
provider fails instead of winning. Device: $HT_BENCH_DEVICE, else cuda when visible, else cpu.
These are not tests of the suite (`make test` runs only tests/): timings never assert anything.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("pytest_benchmark", reason="op benchmarks need pytest-benchmark: pip install -e '.[bench]'")

from engine.bench.measure import relative_error  # noqa: E402
from engine.config import ModelConfig  # noqa: E402
from engine.model import build_reference_model  # noqa: E402
from engine.optimize import rewrites  # noqa: E402
from engine.optimize.kernels import get_kernels  # noqa: E402
from engine.optimize.model import OptimizedHTModel  # noqa: E402
from engine.preprocess import pil_resize_matrix, preprocess_frames  # noqa: E402
from engine.synthetic import synthetic_frame  # noqa: E402
from engine.weights import random_package_tensors  # noqa: E402

DEVICE = os.environ.get("HT_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
BATCHES = [1, 8]
# Relative error (max|a-b| / max|b|) a provider may have against the reference before it is timed.
AGREEMENT = 1e-4
LAYER = 1  # the adapter/feature level taken from the small-depth full-width model below


def _kernel_providers() -> list:
    names = ["torch"]
    for name in ("triton", "cuda"):
        try:
            usable, _ = get_kernels(name).available(DEVICE)
        except Exception:  # provider not installed or not importable here: not benchmarked
            usable = False
        if usable:
            names.append(name)
    return names


KERNELS = _kernel_providers()


@pytest.fixture(scope="module")
def model_parts():
    """Full-width ViT-B/16 with 4 blocks (levels after blocks 1-3): enough for one adapter and the whole head."""
    cfg = ModelConfig.for_arch("biomedclip-vit-b16", "seg", 2, layers=4, extract_layers=[1, 2, 3],
                               adapter_layers=[0, 1, 2, 3])
    tensors = random_package_tensors(cfg, seed=0, calibrate=False)
    reference = build_reference_model(cfg, tensors).to(DEVICE)
    prefix = f"backbone.blocks.{LAYER}.adapter."
    adapter_tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    folded = rewrites.fold_adapter(adapter_tensors, cfg.filter_kind, cfg.adapter_ln_eps)
    folded = {name: (value.to(DEVICE) if isinstance(value, torch.Tensor) else value)
              for name, value in vars(folded).items()}
    return {"cfg": cfg, "tensors": tensors, "reference": reference, "folded": folded}


def _inputs(cfg, batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.num_tokens, cfg.width, generator=generator).to(DEVICE)


def _run(benchmark, group: str, provider: str, batch: int, fn, expected, *args):
    """Check `fn(*args)` against `expected`, then time it; synchronize so GPU time is inside the timing."""
    with torch.inference_mode():
        error = relative_error(fn(*args), expected)
    assert error <= AGREEMENT, f"{provider} disagrees with the reference: relative error {error:.2e}"
    benchmark.group = f"{group} | batch {batch} | {DEVICE}"
    benchmark.extra_info.update(provider=provider, batch=batch, device=DEVICE, max_rel_error=error)

    def timed():
        with torch.inference_mode():
            out = fn(*args)
        if DEVICE.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    benchmark(timed)


def _ours_adapter(kernels: str, folded: dict, grid: int):
    k = get_kernels(kernels)()
    f = folded

    def adapter(x):
        batch, tokens, width = x.shape
        r = f["w_norm"].shape[0]
        z = k.adapter_in(x.reshape(-1, width), f["w_norm"], f["w_raw"], f["bias"], f["eps"])
        g = k.adapter_spatial(z.view(batch, tokens, r), grid, grid, f["spectral"], f["k3"], f["k5"], f["k7"],
                              f["conv_bias"], f["noise_w1"], f["noise_b1"], f["noise_w2"], f["noise_b2"], f["proj"],
                              f["proj_bias"])
        return k.adapter_out(g.view(-1, r), f["w2"], f["b2"], x.reshape(-1, width)).view(batch, tokens, width)

    return adapter


def _providers(reference_fn, ours: dict) -> dict:
    providers = {"reference": reference_fn, "compiled": torch.compile(reference_fn)}
    providers.update(ours)
    return providers


ADAPTER_PROVIDERS = ["reference", "compiled"] + [f"ours-{k}" for k in KERNELS] + ["ours-torch+compile"]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("provider", ADAPTER_PROVIDERS)
def test_adapter(benchmark, model_parts, provider, batch):
    cfg, folded = model_parts["cfg"], model_parts["folded"]
    reference = model_parts["reference"].backbone.blocks[LAYER].adapter
    ours = {f"ours-{k}": _ours_adapter(k, folded, cfg.grid) for k in KERNELS}
    ours["ours-torch+compile"] = torch.compile(_ours_adapter("torch", folded, cfg.grid))
    fn = _providers(reference, ours)[provider]
    x = _inputs(cfg, batch, seed=batch)
    with torch.inference_mode():
        expected = reference(x)
    _run(benchmark, "adapter (LN-mix, W1, spatial, GELU, W2, residual)", provider, batch, fn, expected, x)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("provider", ["reference", "compiled"] + [f"ours-{k}" for k in KERNELS])
def test_adapter_spatial(benchmark, model_parts, provider, batch):
    """Reference: `SpatialPart` on `[B,r,h,w]` then GELU of all tokens (what the adapter does next); ours: the
    `adapter_spatial` op on `[B,N,r]`, which includes that GELU and passes the CLS token."""
    cfg, f = model_parts["cfg"], model_parts["folded"]
    spatial = model_parts["reference"].backbone.blocks[LAYER].adapter.spatial
    grid, r = cfg.grid, cfg.bottleneck

    def reference(z):
        batch = z.shape[0]
        s = z[:, 1:].transpose(1, 2).reshape(batch, r, grid, grid)
        o = spatial(s).reshape(batch, r, grid * grid).transpose(1, 2)
        return torch.nn.functional.gelu(torch.cat([z[:, :1], o], dim=1))

    def ours_for(name):
        k = get_kernels(name)()
        return lambda z: k.adapter_spatial(z, grid, grid, f["spectral"], f["k3"], f["k5"], f["k7"], f["conv_bias"],
                                           f["noise_w1"], f["noise_b1"], f["noise_w2"], f["noise_b2"], f["proj"],
                                           f["proj_bias"])

    fn = _providers(reference, {f"ours-{k}": ours_for(k) for k in KERNELS})[provider]
    generator = torch.Generator().manual_seed(100 + batch)
    z = torch.randn(batch, cfg.num_tokens, r, generator=generator).to(DEVICE)
    with torch.inference_mode():
        expected = reference(z)
    _run(benchmark, "adapter spatial part", provider, batch, fn, expected, z)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("provider", ["pillow", "reference", "compiled"] + [f"ours-{k}" for k in KERNELS])
def test_preprocess(benchmark, provider, batch):
    """480×640 gray uint8 frames → `[B,3,224,224]` float32. `pillow`: Pillow itself per frame (the ground truth
    the numpy reference reproduces bit-exactly); `reference`: engine.preprocess (the host path: its C extension
    `engine._frame_resize` where it is built, else Pillow); `compiled`:
    torch.compile of the op's pure-PyTorch reference; ours: the `preprocess` op of each kernel provider."""
    from PIL import Image

    from htkernels.preprocess import preprocess_ref

    size, scale = 224, 1.0 / 255.0
    frames = np.stack([synthetic_frame(480, 640, seed=k)[0] for k in range(batch)])
    preprocessing = {"grayscale": True, "resize": "pil_bicubic", "size": size, "scale": scale, "mean": None,
                     "std": None, "channels": 3}
    rows = torch.from_numpy(pil_resize_matrix(480, size)).to(torch.int32).to(DEVICE)
    cols = torch.from_numpy(pil_resize_matrix(640, size)).to(torch.int32).to(DEVICE)
    device_frames = torch.from_numpy(frames).to(DEVICE)

    def pillow(frames):
        out = np.empty((len(frames), 3, size, size), dtype=np.float32)
        for index, frame in enumerate(frames):
            resized = np.asarray(Image.fromarray(frame).resize((size, size)), dtype=np.float32) * np.float32(scale)
            out[index] = resized
        return torch.from_numpy(out)

    def ours_for(name):
        k = get_kernels(name)()
        return lambda x: k.preprocess(x, rows, cols, scale, torch.float32)

    torch_fns = {"compiled": torch.compile(lambda x: preprocess_ref(x, rows, cols, scale, torch.float32))}
    torch_fns.update({f"ours-{k}": ours_for(k) for k in KERNELS})
    expected = torch.from_numpy(preprocess_frames(list(frames), preprocessing))
    if provider == "pillow":
        _run(benchmark, "preprocess 480x640 -> 224", provider, batch, pillow, expected, frames)
    elif provider == "reference":
        _run(benchmark, "preprocess 480x640 -> 224", provider, batch,
             lambda f: torch.from_numpy(preprocess_frames(list(f), preprocessing)), expected, frames)
    else:
        _run(benchmark, "preprocess 480x640 -> 224", provider, batch, torch_fns[provider], expected, device_frames)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("provider", ["reference", "compiled", "ours"])
def test_heads(benchmark, model_parts, provider, batch):
    """Three-level seg head on features of blocks 1-3: reference `MultiLevelHead` (1×1 conv after the upsample)
    and the optimized model's head region (levels' last linear and the classifier folded, classifier before the
    upsample), called with the same features."""
    cfg = model_parts["cfg"]
    head = model_parts["reference"].head
    features = [_inputs(cfg, batch, seed=200 + level) for level in range(len(cfg.extract_layers))]
    ours = OptimizedHTModel(cfg, model_parts["tensors"]).eval().to(DEVICE).head
    fns = {"reference": head, "compiled": torch.compile(head), "ours": ours}
    with torch.inference_mode():
        expected = head(features)
    _run(benchmark, "seg head (3 levels, 224x224 logits)", provider, batch, fns[provider], expected, features)
