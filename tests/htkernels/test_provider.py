"""The Triton provider in the optimized model: the fused adapter equals the reference adapter (fp32 within 1e-5)."""

import pytest
import torch

from engine.model import build_reference_model
from engine.model.adapter import HTAdapter
from engine.optimize.kernels import get_kernels, kernel_provider
from engine.optimize.model import OptimizedHTModel
from engine.optimize.rewrites import fold_adapter

from ..helpers import random_images, small_config, small_tensors
from ..tolerances import RELATIVE, assert_relative


def random_adapter(width, channels, filter_kind, grid, seed):
    torch.manual_seed(seed)
    adapter = HTAdapter(width, channels, filter_kind, grid).eval()
    with torch.no_grad():
        for param in adapter.parameters():  # away from the init (γ = 1e-6, φ = 1), as a trained adapter is
            param.copy_(torch.randn_like(param) * (0.3 if param.dim() > 1 else 0.5) + (param.dim() == 1) * 0.2)
    return adapter


def fused_adapter(provider, x, folded, grid, dtype):
    batch, tokens, width = x.shape
    cast = {name: (value.to(dtype) if name in ("w_norm", "w_raw", "bias", "w2", "b2") else value)
            for name, value in vars(folded).items() if isinstance(value, torch.Tensor)}
    xd = x.to(dtype)
    channels = cast["w_norm"].shape[0]
    z = provider.adapter_in(xd.view(-1, width), cast["w_norm"], cast["w_raw"], cast["bias"], folded.eps)
    g = provider.adapter_spatial(z.view(batch, tokens, channels), grid, grid, cast.get("spectral"), cast["k3"],
                                 cast["k5"], cast["k7"], cast["conv_bias"], cast["noise_w1"], cast["noise_b1"],
                                 cast["noise_w2"], cast["noise_b2"], cast["proj"], cast["proj_bias"])
    return provider.adapter_out(g.view(-1, channels), cast["w2"], cast["b2"], xd.view(-1, width)).view_as(xd)


@pytest.mark.parametrize("filter_kind", ["channel", "spectral"])
@pytest.mark.parametrize("batch,grid", [(1, 7), (2, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_adapter_equals_reference_adapter(device, poisoned, filter_kind, batch, grid, dtype):
    adapter = random_adapter(48, 16, filter_kind, grid, seed=batch * 10 + grid)
    x = torch.randn(batch, 1 + grid * grid, 48, generator=torch.Generator().manual_seed(grid))
    with torch.no_grad():
        expected = adapter.double()(x.double())
        folded = fold_adapter(adapter.float().state_dict(), filter_kind, 1e-5)
    folded = type(folded)(**{name: (value.to(device) if isinstance(value, torch.Tensor) else value)
                             for name, value in vars(folded).items()})
    actual = fused_adapter(get_kernels("triton")(), x.to(device), folded, grid, dtype)
    assert actual.dtype == dtype
    assert_relative(actual.float().cpu(), expected, RELATIVE[dtype], f"adapter {filter_kind} {dtype}")


@pytest.mark.parametrize("arch,task,filter_kind", [("biomedclip-vit-b16", "seg", "channel"),
                                                   ("openai-clip-vit-b16", "cls", "spectral")])
def test_optimized_model_with_triton_kernels(device, arch, task, filter_kind):
    cfg = small_config(arch, task, filter_kind, layers=2, extract_layers=[0, 1, 1], adapter_layers=[0, 1])
    tensors = small_tensors(cfg, seed=3)
    images = random_images(2, cfg.image_size, seed=4)
    with torch.inference_mode():
        expected = build_reference_model(cfg, tensors)(images)
        model = OptimizedHTModel(cfg, tensors, kernels=kernel_provider("triton")).eval().to(device)
        actual = model(images.to(device)).cpu()
    assert_relative(actual, expected, RELATIVE[torch.float32], f"optimized+triton {arch} {task} {filter_kind}")


def test_spectral_model_computes_each_impulse_response_once(device):
    """Built outside inference mode (as the backends build it), the model's spectral filters are unchanged weights:
    the second forward reuses each adapter's κ from the first and equals it bitwise, both equal to the reference."""
    from htkernels.adapter_spatial import IMPULSE_RESPONSES

    cfg = small_config("openai-clip-vit-b16", "cls", "spectral", layers=2, extract_layers=[0, 1, 1],
                       adapter_layers=[0, 1])
    tensors = small_tensors(cfg, seed=8)
    images = random_images(2, cfg.image_size, seed=9).to(device)
    model = OptimizedHTModel(cfg, tensors, kernels=kernel_provider("triton")).eval().to(device)
    filters = [block.adapter.spectral for block in model.blocks if block.adapter is not None]
    assert len(filters) == 2
    kept = len(IMPULSE_RESPONSES)
    with torch.inference_mode():
        first = model(images)
        assert len(IMPULSE_RESPONSES) == kept + 2, "the forward did not keep one κ per adapter"
        kappas = [IMPULSE_RESPONSES.get((spectral,), cfg.grid, cfg.grid) for spectral in filters]
        second = model(images)
        expected = build_reference_model(cfg, tensors)(images.cpu())
    assert all(IMPULSE_RESPONSES.get((spectral,), cfg.grid, cfg.grid) is kappa
               for spectral, kappa in zip(filters, kappas))
    assert torch.equal(first, second)
    assert_relative(second.cpu(), expected, RELATIVE[torch.float32], "optimized+triton spectral, cached κ")


@pytest.mark.parametrize("folded", [True, False], ids=["layernorm-folded", "layernorm-then-fused-epilogue"])
@pytest.mark.parametrize("arch,task", [("biomedclip-vit-b16", "seg"), ("openai-clip-vit-b16", "cls")])
def test_optimized_model_with_fused_dense_layers(device, poisoned, monkeypatch, arch, task, folded):
    """Every fused path of the block's dense layers forced on (what the launch tuner picks where it measured them
    faster than cuBLAS), against the reference: qkv and fc1 + activation with the LayerNorm folded into their GEMM
    (`norm_linear`), or (its default) torch's LayerNorm then the fused GEMM + activation epilogue (`linear_act`);
    projection/fc2 + residual fused (`adapter_out`, split along K where offered); attention on SDPA's math back end, not SDPA's own choice
    (`attention`); the embedding as one GEMM reading the image (`patch_embed`); adapter_out in the spatial
    kernel's epilogue (`adapter_spatial_out`), reading the image mean from adapter_in's partial sums (`adapter`,
    pooled); the seg head's tail as one kernel (`head_logits`). With the folded LayerNorm, fc2 also runs adapter_in
    as the tail of its kernel (`residual_adapter`, fused); without, fc2 and the adapter are two ops (its default).
    GELU (biomedclip) and QuickGELU (openai, which also has `ln_pre` after the embedding)."""
    import htkernels._tune as tune

    chosen, splits = [], []

    def prefer_fused(op, key, candidates, launch, device, verify=None):
        fused = next((c for c in candidates if c.get("impl") in ("triton", "math", "fused", "pooled")), candidates[0])
        fused = next((c for c in candidates if c.get("split_k", 1) > 1), fused)  # split-K where it is offered
        config = candidates[0] if op in ("norm_linear", "residual_adapter") and not folded else fused
        chosen.append((op, key, config.get("impl", "triton"), any(c.get("impl") == "torch" for c in candidates)))
        splits.append((op, key, config.get("split_k", 1)))
        return config

    monkeypatch.setattr(tune.TUNER, "choose", prefer_fused)
    cfg = small_config(arch, task, "channel", layers=2, extract_layers=[0, 1, 1], adapter_layers=[0, 1])
    tensors = small_tensors(cfg, seed=6)
    images = random_images(2, cfg.image_size, seed=7)
    with torch.inference_mode():
        expected = build_reference_model(cfg, tensors)(images)
        model = OptimizedHTModel(cfg, tensors, kernels=kernel_provider("triton")).eval().to(device)
        actual = model(images.to(device)).cpu()
    assert_relative(actual, expected, RELATIVE[torch.float32], f"optimized, fused dense layers, {arch} {task}")
    # qkv (output 3·width, key[2]), fc1 (output 4·width) and fc2 (inner 4·width, key[2]) were offered cuBLAS and took
    # the fused kernel (the projection's inner size, the toy width, is the adapter's: no cuBLAS candidate there).
    fused_over_cublas = {(op, key[2]) for op, key, impl, offered_torch in chosen if impl == "triton" and offered_torch}
    dense = "norm_linear" if folded else "linear_act"
    # The head's levels too: LayerNorm → fc1 → GELU (output head_dim) through the same op.
    # The seg head's tail as one kernel (key[2]: the grid's width), where torch's four ops are the default.
    tail = {("head_logits", cfg.grid)} if task == "seg" else set()
    # fc2 (inner 4·width) through adapter_out where its block's adapter runs as a separate op.
    fc2 = set() if folded else {("adapter_out", 4 * cfg.width)}
    assert fused_over_cublas == {(dense, 3 * cfg.width), (dense, 4 * cfg.width), ("patch_embed", cfg.patch_size),
                                 (dense, cfg.head_dim)} | tail | fc2
    adapters = len(cfg.adapter_layers)
    assert [impl for op, _, impl, _ in chosen if op == "attention"] == ["math"] * cfg.layers
    assert [impl for op, _, impl, _ in chosen if op == "adapter_spatial_out"] == ["fused"] * adapters
    assert [impl for op, _, impl, _ in chosen if op == "residual_adapter"] == \
        ["fused" if folded else "separate"] * adapters
    assert [impl for op, _, impl, _ in chosen if op == "adapter"] == ([] if folded else ["pooled"] * adapters)
    # fc2 through adapter_out (inner 4·width > 128, batch 2) split along K; nothing else is offered split-K here.
    assert [(op, key[2]) for op, key, split in splits if split > 1] == \
        ([] if folded else [("adapter_out", 4 * cfg.width)] * adapters)


def test_provider_availability_says_why():
    provider = get_kernels("triton")
    usable, reason = provider.available("cpu")
    from htkernels._triton import interpreting

    assert usable == interpreting()
    if not usable:
        assert "CUDA" in reason
    if not torch.cuda.is_available():
        usable, reason = provider.available("cuda")
        assert not usable and "no CUDA GPU" in reason
