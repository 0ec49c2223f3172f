"""Each exact rewrite of engine/optimize/rewrites.py against the reference computation it replaces (fp32/fp64)."""

import pytest
import torch
import torch.nn.functional as F

from engine.model import build_reference_model
from engine.model.adapter import HTAdapter
from engine.model.heads import MultiLevelHead
from engine.optimize import rewrites
from engine.optimize.cpu_kernels import CpuAdapterKernels
from engine.optimize.kernels import TorchAdapterKernels
from htkernels.adapter_in import adapter_in_ref
from htkernels.adapter_out import adapter_out_ref
from htkernels.adapter_spatial import adapter_spatial_ref

from .helpers import random_images, small_config, small_tensors
from .tolerances import EXACT_REWRITE, RELATIVE, assert_relative

FP32 = RELATIVE[torch.float32]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _adapter(filter_kind, grid, seed, channels=16, width=40):
    cfg = small_config("biomedclip-vit-b16", filter_kind=filter_kind, image_size=16 * grid, width=width, heads=4,
                       bottleneck=channels)
    tensors = small_tensors(cfg, seed=seed)
    prefix = "backbone.blocks.1.adapter."
    sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    module = HTAdapter(width, channels, filter_kind, grid).eval()
    module.load_state_dict(sub)
    return module, sub


def test_prune_dead_blocks_keeps_only_live_blocks():
    cfg = small_config("openai-clip-vit-b16", extract_layers=[0, 2, 1])
    tensors = small_tensors(cfg, seed=1)
    pruned = rewrites.prune_dead_blocks(tensors, cfg.layers, cfg.extract_layers)
    assert rewrites.live_blocks(cfg.layers, cfg.extract_layers) == 3
    assert not any(k.startswith("backbone.blocks.3.") for k in pruned)
    assert {k for k in tensors if not k.startswith("backbone.blocks.3.")} == set(pruned)
    # The pruned block really feeds no output: the reference ignores it (an all-NaN block 3 changes nothing).
    poisoned = dict(tensors)
    for name in tensors:
        if name.startswith("backbone.blocks.3."):
            poisoned[name] = torch.full_like(tensors[name], float("nan"))
    images = random_images(1, cfg.image_size, seed=2)
    with torch.inference_mode():
        torch.testing.assert_close(build_reference_model(cfg, poisoned)(images),
                                   build_reference_model(cfg, tensors)(images), rtol=0, atol=0)


@pytest.mark.parametrize("batch", [1, 3])
def test_fold_layernorm_mix(batch):
    module, t = _adapter("channel", 7, seed=3)
    x = torch.randn(batch * 50, 40, generator=_gen(batch))
    w_norm, w_raw, bias = rewrites.fold_layernorm_mix(t["norm.weight"], t["norm.bias"], t["gamma"], t["gammax"],
                                                      t["project1.weight"], t["project1.bias"])
    with torch.no_grad():
        expected = module.project1(module.norm(x) * module.gamma + x * module.gammax)
    assert_relative(adapter_in_ref(x, w_norm, w_raw, bias, 1e-5), expected, FP32, "LN-mix fold")
    assert_relative(TorchAdapterKernels.adapter_in(x, w_norm, w_raw, bias, 1e-5), expected, FP32, "torch adapter_in")


@pytest.mark.parametrize("grid", [7, 6])
def test_fold_channel_filter(grid):
    module, t = _adapter("channel", grid, seed=grid)
    s = torch.randn(2, 16, grid, grid, generator=_gen(grid))
    k3, k5, k7 = (t[f"spatial.dw{k}.weight"][:, 0] for k in (3, 5, 7))
    f3, f5, f7, noise_w1 = rewrites.fold_channel_filter(t["spatial.freq_filter"], k3, k5, k7,
                                                        t["spatial.noise1.weight"][:, :, 0, 0])
    spatial = module.spatial
    with torch.no_grad():
        filtered = spatial.frequency_filter(s)
        for conv, folded in ((spatial.dw3, f3), (spatial.dw5, f5), (spatial.dw7, f7)):
            size = folded.shape[-1]
            actual = F.conv2d(s, folded[:, None], conv.bias, padding=size // 2, groups=16)
            assert_relative(actual, conv(filtered), FP32, f"dw{size} with folded filter")
        actual_alpha = torch.softmax(spatial.noise2(F.relu(F.conv2d(s.mean((2, 3), keepdim=True), noise_w1[..., None,
                                                                    None], spatial.noise1.bias))), dim=1)
        assert_relative(actual_alpha, spatial.noise_weights(filtered), FP32, "noise estimator with folded filter")


def test_fold_projector_identity():
    proj = torch.randn(16, 16, generator=_gen(1)) / 4
    bias = torch.randn(16, generator=_gen(2))
    t = torch.randn(3, 49, 16, generator=_gen(3))
    eye_plus, b = rewrites.fold_projector_identity(proj, bias)
    assert_relative(F.linear(t, eye_plus, b), t + F.linear(t, proj, bias), FP32, "(I+P)")


@pytest.mark.parametrize("identity", [True, False])
@pytest.mark.parametrize("batch,h,w", [(1, 7, 7), (3, 6, 9)])
def test_merged_depthwise_kernel(identity, batch, h, w):
    g = _gen(batch * h * w + identity)
    r = 8
    f = torch.randn(batch, r, h, w, generator=g)
    k3, k5, k7 = (torch.randn(r, k, k, generator=g) for k in (3, 5, 7))
    conv_bias = torch.randn(3, r, generator=g)
    alpha = torch.softmax(torch.randn(batch, 3, generator=g), dim=-1)
    expected = f.clone() if identity else torch.zeros_like(f)
    for index, kernel in enumerate((k3, k5, k7)):
        size = kernel.shape[-1]
        conv = F.conv2d(f, kernel[:, None], conv_bias[index], padding=size // 2, groups=r)
        expected = expected + alpha[:, index, None, None, None] * conv
    kernel, bias = rewrites.merged_depthwise_kernel(alpha, k3, k5, k7, conv_bias, identity)
    actual = F.conv2d(f.reshape(1, batch * r, h, w), kernel.reshape(batch * r, 1, 7, 7), bias.reshape(-1),
                      padding=3, groups=batch * r).reshape(batch, r, h, w)
    assert_relative(actual, expected, FP32, "merged per-sample 7x7 kernel")


@pytest.mark.parametrize("h,w", [(14, 14), (7, 7), (6, 9), (5, 8)])
def test_spectral_filter_dft_matrices(h, w):
    g = _gen(h * 31 + w)
    s = torch.randn(3, 8, h, w, generator=g, dtype=torch.float64)
    spectral = torch.randn(8, h, w // 2 + 1, 2, generator=g, dtype=torch.float64)
    expected = torch.fft.irfft2(torch.fft.rfft2(s) * torch.view_as_complex(spectral), s=(h, w))
    actual = rewrites.spectral_filter_dft(s, spectral, rewrites.dft_matrices(h, w, torch.float64))
    assert_relative(actual, expected, EXACT_REWRITE, f"DFT-matmul spectral filter {h}x{w}")
    dc = rewrites.spectral_filter_dc_gain(spectral)[None, :] * s.mean((2, 3))
    assert_relative(dc, expected.mean((2, 3)), EXACT_REWRITE, "DC gain of the spectral filter")


@pytest.mark.parametrize("filter_kind", ["channel", "spectral"])
@pytest.mark.parametrize("batch,grid", [(1, 7), (3, 6), (2, 14)])
def test_fold_adapter_whole(filter_kind, batch, grid):
    module, t = _adapter(filter_kind, grid, seed=batch + grid)
    folded = rewrites.fold_adapter(t, filter_kind, 1e-5)
    assert (folded.spectral is None) == (filter_kind == "channel")
    x = torch.randn(batch, grid * grid + 1, 40, generator=_gen(grid))
    args = (folded.spectral, folded.k3, folded.k5, folded.k7, folded.conv_bias, folded.noise_w1, folded.noise_b1,
            folded.noise_w2, folded.noise_b2, folded.proj, folded.proj_bias)
    with torch.no_grad():
        expected = module(x) - x
    for name, provider in (("htkernels refs", None), ("torch provider", TorchAdapterKernels),
                           ("cpu provider", CpuAdapterKernels)):
        if provider is None:
            z = adapter_in_ref(x.view(-1, 40), folded.w_norm, folded.w_raw, folded.bias, folded.eps)
            gl = adapter_spatial_ref(z.view(batch, -1, 16), grid, grid, *args)
            y = adapter_out_ref(gl.view(-1, 16), folded.w2, folded.b2, x.view(-1, 40))
        else:
            z = provider.adapter_in(x.view(-1, 40), folded.w_norm, folded.w_raw, folded.bias, folded.eps)
            gl = torch.full_like(z, float("nan")).view(batch, -1, 16)
            gl.copy_(provider.adapter_spatial(z.view(batch, -1, 16), grid, grid, *args))
            y = provider.adapter_out(gl.view(-1, 16), folded.w2, folded.b2, x.view(-1, 40))
        assert_relative(y.view_as(x) - x, expected, FP32, f"{name}: folded {filter_kind} adapter")


@pytest.mark.parametrize("filter_kind", ["channel", "spectral"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_cpu_adapter_spatial_equals_the_reference(filter_kind, dtype):
    """The CPU provider's shifted-sum depthwise conv as inductor compiles it, on a non-square grid, batch 1 and then
    a dynamic batch; bf16 `z` (the bf16 model's) against the fp64 reference at the bf16 bound."""
    h, w = 5, 7
    module, t = _adapter(filter_kind, 6, seed=11)
    folded = rewrites.fold_adapter(t, filter_kind, 1e-5)
    spectral = None if filter_kind == "channel" else torch.randn(16, h, w // 2 + 1, 2, generator=_gen(5))
    weights = (folded.k3, folded.k5, folded.k7, folded.conv_bias, folded.noise_w1, folded.noise_b1, folded.noise_w2,
               folded.noise_b2, folded.proj, folded.proj_bias)
    compiled = torch.compile(CpuAdapterKernels.adapter_spatial)
    for batch in (1, 3, 2):
        z = torch.randn(batch, h * w + 1, 16, generator=_gen(batch)).to(dtype)
        expected = adapter_spatial_ref(z.double(), h, w, None if spectral is None else spectral.double(),
                                       *[t.double() for t in weights])
        with torch.inference_mode():
            actual = compiled(z, h, w, spectral, *weights)
        assert actual.dtype == dtype
        assert_relative(actual.double(), expected, RELATIVE[dtype],
                        f"compiled cpu adapter_spatial, {filter_kind} {dtype}, batch {batch}")


@pytest.mark.parametrize("batch", [1, 3])
def test_seg_conv_before_upsample(batch):
    g = _gen(batch)
    maps = torch.randn(batch, 24, 7, 7, generator=g)
    weight = torch.randn(5, 24, 1, 1, generator=g)
    bias = torch.randn(5, generator=g)
    expected = F.conv2d(F.interpolate(maps, size=(112, 112), mode="bilinear", align_corners=False), weight, bias)
    assert_relative(rewrites.seg_conv_before_upsample(maps, weight, bias, 112), expected, FP32, "conv before upsample")


@pytest.mark.parametrize("task,arch", [("seg", "biomedclip-vit-b16"), ("cls", "biomedclip-vit-b16"),
                                       ("cls", "openai-clip-vit-b16")])
def test_fold_head_output(task, arch):
    cfg = small_config(arch, task)
    tensors = small_tensors(cfg, seed=9)
    head = MultiLevelHead(cfg).eval()
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    g = _gen(4)
    hidden = [torch.randn(2, 49, 24, generator=g) for _ in range(3)]
    with torch.no_grad():
        fused = sum(level[3](a) for level, a in zip(head.levels, hidden))
        first = head.hidden if cfg.cls_head == "mlp" and task == "cls" else head.out
        fused_maps = fused.transpose(1, 2).reshape(2, 24, 7, 7)
        weights, bias = rewrites.fold_head_output([lv[3].weight for lv in head.levels],
                                                  [lv[3].bias for lv in head.levels], first.weight, first.bias)
        if task == "seg":
            expected = first(fused_maps)
            actual = sum(F.linear(a, w) for a, w in zip(hidden, weights)) + bias
            actual = actual.transpose(1, 2).reshape(2, -1, 7, 7)
        else:
            expected = first(fused.mean(1))
            actual = sum(F.linear(a.mean(1), w) for a, w in zip(hidden, weights)) + bias
    assert_relative(actual, expected, FP32, f"head output folded ({task}, {cfg.cls_head})")
