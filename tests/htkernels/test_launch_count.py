"""How many kernels a batch-1 forward launches with every fused candidate chosen, counted on CPU: the structure's own
measure of batch-1 latency (each kernel of the CUDA graph costs its launch gap; issue target ≤ 80 for ViT-B/16).

Counted while the optimized model runs on the Triton provider under the interpreter: each Triton launch is one
kernel (the torch ops inside an interpreted launch are the interpreter's, not the GPU's, and are not counted); the
attention op is one (SDPA's flash / memory-efficient kernel, or FA3, on a GPU; here SDPA's math); every other aten op
that computes (not a view, not an allocation) is one, as a cuBLAS GEMM or an elementwise kernel would be on a GPU.
`benchmarks/gpu/kernel_count.py` counts the real kernels of the captured graph on a GPU."""

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import htkernels._tune as tune
from engine.optimize.kernels import kernel_provider
from engine.optimize.model import OptimizedHTModel

from ..helpers import random_images, small_config, small_tensors

# aten ops that launch nothing on a GPU: views, metadata and allocations (and `to` to the dtype a tensor has, the
# fp32 model's `.float()`: a conversion that copies runs as `_to_copy`, which counts).
FREE = {"to", "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "slice", "select", "as_strided",
        "unsqueeze", "squeeze", "detach", "alias", "empty", "empty_strided", "empty_like", "split", "unbind", "unfold",
        "lift_fresh", "_reshape_alias", "new_empty", "new_empty_strided"}

# A dense layer, as one cuBLAS GEMM with its bias (seen as `linear` or, decomposed, `addmm`).
GEMMS = {"linear", "addmm", "mm"}


class Launches(TorchDispatchMode):
    """Counts the aten ops that compute, by name, outside interpreted Triton launches; Triton launches and attention
    calls are added by `counting`."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self.quiet = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.quiet and name not in FREE:
            self.counts["gemm" if name in GEMMS else f"aten.{name}"] += 1
        return func(*args, **(kwargs or {}))


def counting(monkeypatch, launches: Launches, provider):
    """Patches the interpreter's launch and the provider's attention to count themselves once and hide their ops."""
    from triton.runtime.interpreter import GridExecutor

    real_launch = GridExecutor.__call__

    def launch(self, *args, **kwargs):
        launches.counts[f"triton.{self.fn.__name__}"] += 1
        launches.quiet += 1
        try:
            return real_launch(self, *args, **kwargs)
        finally:
            launches.quiet -= 1

    real_attention = type(provider).attention

    def attention(qkv, heads):
        if not launches.quiet:
            launches.counts["attention"] += 1
        launches.quiet += 1
        try:
            return real_attention(qkv, heads)
        finally:
            launches.quiet -= 1

    monkeypatch.setattr(GridExecutor, "__call__", launch)
    monkeypatch.setattr(provider, "attention", attention)


def prefer_fused(op, key, candidates, launch, device, verify=None):
    """The tuner choosing every fused candidate (what it keeps where each measured faster)."""
    return next((c for c in candidates if c.get("impl") in ("triton", "math", "fused", "pooled")), candidates[0])


@pytest.mark.parametrize("arch,task,ln_pre", [("biomedclip-vit-b16", "seg", 0), ("openai-clip-vit-b16", "cls", 1)])
def test_batch1_forward_with_every_fused_candidate_is_six_kernels_per_block(device, monkeypatch, arch, task, ln_pre):
    """Per block six kernels (qkv with its LayerNorm, attention, projection + residual, fc1 with its LayerNorm and
    GELU, fc2 + residual + adapter_in, the spatial kernel with adapter_out); the embedding one (plus `ln_pre`, openai's);
    per head level two (the reduce GEMM; LayerNorm → fc1 → GELU); seg's tail one (cls: pooling ops). For ViT-B/16 (12
    blocks, 3 levels, seg) that is 1 + 72 + 6 + 1 = 80 kernels."""
    from htkernels._triton import interpreting

    if not interpreting():
        pytest.skip("counts interpreted launches; on a GPU benchmarks/gpu/kernel_count.py counts the graph's kernels")
    monkeypatch.setattr(tune.TUNER, "choose", prefer_fused)
    layers = 3
    cfg = small_config(arch, task, "channel", layers=layers, extract_layers=[0, 1, 2], adapter_layers=[0, 1, 2])
    provider = kernel_provider("triton")
    model = OptimizedHTModel(cfg, small_tensors(cfg, seed=2), kernels=provider).eval().to(device)
    images = random_images(1, cfg.image_size, seed=3).to(device)
    launches = Launches()
    with torch.inference_mode():
        model(images, grid=task == "seg")  # warm: the cached weight derivations (folded LayerNorms) are made here
        counting(monkeypatch, launches, provider)
        with launches:
            model(images, grid=task == "seg")
    blocks = {"triton._norm_linear_kernel": 2 * layers, "attention": layers, "triton._adapter_out_kernel": layers,
              "triton._residual_adapter_in_kernel": layers, "triton._adapter_spatial_kernel": layers}
    head = {"triton._norm_linear_kernel": len(cfg.extract_layers), "gemm": len(cfg.extract_layers)}
    expected = collections.Counter(blocks) + collections.Counter(head) + collections.Counter(
        {"triton._patch_embed_kernel": 1})
    if ln_pre:
        expected["aten.layer_norm"] += 1
    if task == "seg":
        expected["triton._head_logits_kernel"] += 1
    else:  # the pooled cls logits: the levels' pixel rows side by side, their mean, the output layer(s)
        expected.update({"aten.cat": 1, "aten.mean": 1, "gemm": 2 if cfg.cls_head == "mlp" else 1})
        if cfg.cls_head == "mlp":
            expected["aten.relu"] += 1
    names = collections.Counter({"aten.layer_norm" if name == "aten.native_layer_norm" else name: n
                                 for name, n in launches.counts.items()})
    assert dict(names) == dict(expected)
    if task == "seg":
        assert sum(names.values()) == 1 + 6 * layers + 2 * len(cfg.extract_layers) + 1
