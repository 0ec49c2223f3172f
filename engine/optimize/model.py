"""`OptimizedHTModel`: the reference model after the exact rewrites of `rewrites`, adapters through a kernel provider.

Differences from the reference, all exact in exact arithmetic: blocks past the last extracted layer are gone; the
patch conv is a GEMM on unfolded patches; each adapter runs (with the fc2 before it, `residual_adapter`) as
`adapter_in` (LN-mix folded into W1) →
`adapter_spatial` (filter folded away or done as DFT matmuls, one per-sample 7×7 depthwise conv, `(I+P)`, GELU)
→ `adapter_out` (W2 + residual); the head's output layer is folded into each level's last linear and, for seg,
runs before the bilinear upsample (on 14×14 pixels instead of 224×224).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import BackendError, PackageError
from . import branches, rewrites
from .kernels import AdapterKernels, TorchAdapterKernels


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, dtype) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer.to(dtype).requires_grad_(False)


def _norm(weight: torch.Tensor, bias: torch.Tensor, eps: float, dtype) -> nn.LayerNorm:
    norm = nn.LayerNorm(weight.shape[0], eps=eps)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
    return norm.to(dtype).requires_grad_(False)


class FoldedAdapterModule(nn.Module):
    """Holds one `FoldedAdapter` as buffers: the D-sized GEMM weights in the model dtype, the small spatial
    tensors in fp32 (their math is fp32 whatever the storage dtype)."""

    _GEMM = ("w_norm", "w_raw", "bias", "w2", "b2")

    def __init__(self, folded: rewrites.FoldedAdapter, dtype):
        super().__init__()
        self.eps = folded.eps
        self.has_spectral = folded.spectral is not None
        for field in dataclasses.fields(folded):
            value = getattr(folded, field.name)
            if isinstance(value, torch.Tensor):
                self.register_buffer(field.name, value.to(dtype if field.name in self._GEMM else torch.float32))
        if not self.has_spectral:
            self.spectral = None


class OptimizedBlock(nn.Module):
    """One transformer block and its adapter (if any): the unit that `torch.compile` compiles once and reuses
    for every block of the same shape."""

    def __init__(self, t: dict, prefix: str, cfg: ModelConfig, adapter: FoldedAdapterModule | None, dtype,
                 kernels: AdapterKernels):
        super().__init__()
        self.heads = cfg.heads
        self.grid = cfg.grid
        self.kernels = kernels
        self.norm1 = _norm(t[prefix + "norm1.weight"], t[prefix + "norm1.bias"], cfg.ln_eps, dtype)
        self.qkv = _linear(t[prefix + "attn.qkv.weight"], t[prefix + "attn.qkv.bias"], dtype)
        self.proj = _linear(t[prefix + "attn.proj.weight"], t[prefix + "attn.proj.bias"], dtype)
        self.norm2 = _norm(t[prefix + "norm2.weight"], t[prefix + "norm2.bias"], cfg.ln_eps, dtype)
        self.fc1 = _linear(t[prefix + "mlp.fc1.weight"], t[prefix + "mlp.fc1.bias"], dtype)
        self.fc2 = _linear(t[prefix + "mlp.fc2.weight"], t[prefix + "mlp.fc2.bias"], dtype)
        self.activation = "quick_gelu" if cfg.act == "quick_gelu" else "gelu"
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernels
        attended = k.attention(k.norm_linear(x, self.norm1, self.qkv, "none"), self.heads)
        x = k.linear_residual(attended, self.proj, x)
        hidden = k.norm_linear(x, self.norm2, self.fc1, self.activation)
        if self.adapter is None:
            return k.linear_residual(hidden, self.fc2, x)
        # fc2 + residual and the adapter through one provider method: a provider may run adapter_in in fc2's kernel.
        a = self.adapter
        return k.residual_adapter(hidden, self.fc2, x, self.grid, self.grid, a.w_norm, a.w_raw, a.bias, a.eps,
                                  a.spectral, a.k3, a.k5, a.k7, a.conv_bias, a.noise_w1, a.noise_b1, a.noise_w2,
                                  a.noise_b2, a.proj, a.proj_bias, a.w2, a.b2)


class Embedding(nn.Module):
    """Patch GEMM on unfolded patches (the stride-p conv), CLS and position embeddings, optional `ln_pre`."""

    def __init__(self, cfg: ModelConfig, t: dict, dtype, kernels: AdapterKernels):
        super().__init__()
        width = cfg.width
        self.grid, self.patch, self.dtype = cfg.grid, cfg.patch_size, dtype
        self.kernels = kernels
        self.proj = _linear(t["backbone.patch_embed.weight"].reshape(width, -1), t.get("backbone.patch_embed.bias"),
                            dtype)
        pos = t["backbone.pos_embed"].float()
        self.register_buffer("cls_pos", (t["backbone.cls_token"].float() + pos[0]).reshape(1, 1, width).to(dtype))
        self.register_buffer("patch_pos", pos[1:].unsqueeze(0).to(dtype))
        self.ln_pre = _norm(t["backbone.ln_pre.weight"], t["backbone.ln_pre.bias"], cfg.ln_eps, dtype) \
            if cfg.ln_pre else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.kernels.patch_embed(images, self.proj, self.cls_pos, self.patch_pos, self.patch)
        return self.ln_pre(x) if self.ln_pre is not None else x


class Head(nn.Module):
    """Per level reduce → LN → Linear → GELU, then the folded output layer (`rewrites.fold_head_output`) on the
    concatenated levels; seg upsamples the C-channel logits (conv before upsample), cls pools first."""

    def __init__(self, cfg: ModelConfig, t: dict, dtype, kernels: AdapterKernels):
        super().__init__()
        self.kernels = kernels
        levels = len(cfg.extract_layers)
        self.task, self.grid, self.image_size = cfg.task, cfg.grid, cfg.image_size
        self.reduces = nn.ModuleList(
            _linear(t[f"head.reduces.{i}.weight"], t[f"head.reduces.{i}.bias"], dtype) for i in range(levels))
        self.norms = nn.ModuleList(
            _norm(t[f"head.levels.{i}.0.weight"], t[f"head.levels.{i}.0.bias"], 1e-5, dtype) for i in range(levels))
        self.fc1 = nn.ModuleList(
            _linear(t[f"head.levels.{i}.1.weight"], t[f"head.levels.{i}.1.bias"], dtype) for i in range(levels))
        last_w = [t[f"head.levels.{i}.3.weight"] for i in range(levels)]
        last_b = [t[f"head.levels.{i}.3.bias"] for i in range(levels)]
        self.mlp_cls = cfg.task == "cls" and cfg.cls_head == "mlp"
        first = "head.hidden" if self.mlp_cls else "head.out"
        weights, bias = rewrites.fold_head_output(last_w, last_b, t[first + ".weight"], t[first + ".bias"])
        # The folded [C', levels·512] matrix is small: fp32 keeps the logits' last rounding out of bf16/int8.
        self.register_buffer("out_weight", torch.cat(weights, dim=1).contiguous())
        self.register_buffer("out_bias", bias)
        if self.mlp_cls:
            self.register_buffer("cls_out_weight", t["head.out.weight"].float().contiguous())
            self.register_buffer("cls_out_bias", t["head.out.bias"].float().contiguous())

    def forward(self, features: list, grid: bool = False) -> torch.Tensor:
        """Logits: seg `[B,C,S,S]` (or, with `grid`, the `[B,C,g,g]` grid logits before the upsample, which the frame
        path takes to any frame size in one step, engine.postprocess), cls `[B,C]`."""
        return self.tail([self.level(index, feature) for index, feature in enumerate(features)], grid)

    def level(self, index: int, feature: torch.Tensor) -> torch.Tensor:
        """Level `index`'s hidden `[B, N, head_dim]` from its block's feature `[B, N, width]`: reduce → LayerNorm →
        fc1 → GELU."""
        # Every level runs on all tokens, CLS included: each layer is one GEMM on a contiguous input (reducing the
        # strided `feature[:, 1:]` copies it first, and adds the bias in a kernel of its own, at batch > 1); the
        # tail drops the CLS rows. Rows are independent, so this is exact.
        # LayerNorm → fc1 → GELU through the provider: one kernel where it folds the LayerNorm into the GEMM.
        return self.kernels.norm_linear(self.reduces[index](feature), self.norms[index], self.fc1[index], "gelu")

    def tail(self, hidden: list, grid: bool = False) -> torch.Tensor:
        """The logits of `forward` from every level's hidden (`level`)."""
        if self.task == "seg":
            # The levels' pixel rows through the folded output layer into grid logits (one kernel where it fuses).
            maps = self.kernels.head_logits(hidden, self.out_weight, self.out_bias, self.grid, self.grid)
            return maps if grid else self.upsample(maps)
        stacked = torch.cat([level[:, 1:] for level in hidden], dim=-1).float()
        pooled = F.linear(stacked.mean(dim=1), self.out_weight, self.out_bias)
        if self.mlp_cls:
            pooled = F.linear(torch.relu(pooled), self.cls_out_weight, self.cls_out_bias)
        return pooled

    def upsample(self, maps: torch.Tensor) -> torch.Tensor:
        """Seg grid logits `[B,C,g,g]` → `[B,C,S,S]`: the bilinear upsample that ends `forward` without `grid`."""
        size = self.image_size
        return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)


class OptimizedHTModel(nn.Module):
    """`forward(images float32 [B,3,S,S]) -> float32 logits`, the same numbers as the reference model.

    Made of regions (`embed`, `blocks[i]`, `head`) that the CPU runner compiles one by one: identical blocks share
    one compiled graph, which keeps compile time and the on-disk cache small. `kernels` is the adapter-kernel
    provider every block runs its ops through (`kernel_provider(name)`; default the torch provider)."""

    def __init__(self, cfg: ModelConfig, tensors: dict, kernels: AdapterKernels | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.dtype = dtype
        if isinstance(kernels, str):
            raise BackendError(f"OptimizedHTModel takes a kernel provider instance, not the name {kernels!r}: pass "
                               f"engine.optimize.kernels.kernel_provider({kernels!r})")
        self.kernels = TorchAdapterKernels() if kernels is None else kernels
        self.extract = list(cfg.extract_layers)
        t = rewrites.prune_dead_blocks(tensors, cfg.layers, cfg.extract_layers)
        try:
            self.embed = Embedding(cfg, t, dtype, self.kernels)
            blocks = []
            for index in range(rewrites.live_blocks(cfg.layers, cfg.extract_layers)):
                prefix = f"backbone.blocks.{index}."
                adapter = None
                if index in cfg.adapter_layers:
                    sub = {k[len(prefix + "adapter."):]: v for k, v in t.items() if k.startswith(prefix + "adapter.")}
                    adapter = FoldedAdapterModule(rewrites.fold_adapter(sub, cfg.filter_kind, cfg.adapter_ln_eps),
                                                  dtype)
                blocks.append(OptimizedBlock(t, prefix, cfg, adapter, dtype, self.kernels))
            self.blocks = nn.ModuleList(blocks)
            self.head = Head(cfg, t, dtype, self.kernels)
        except KeyError as exc:
            raise PackageError(f"package tensors lack {exc}, needed by the optimized model of a {cfg.arch} "
                               f"{cfg.task} config") from None

    def features(self, images: torch.Tensor) -> list:
        x = self.embed(images)
        found = {}
        for index, block in enumerate(self.blocks):
            x = block(x)
            found[index] = x
        return [found[i] for i in self.extract]

    def forward(self, images: torch.Tensor, grid: bool = False) -> torch.Tensor:
        """`grid`: seg logits on the head's grid, before the upsample (see `Head.forward`). On CUDA with the head's
        levels as branches (`engine.optimize.branches`), each level runs on a side stream beside the later blocks."""
        if branches.wanted(images.device):
            return self.forward_branched(images, branches.StreamBranches(images.device, len(self.extract)), grid)
        return self.head(self.features(images), grid=grid)

    def forward_branched(self, images: torch.Tensor, fork, grid: bool = False) -> torch.Tensor:
        """`forward` with level ℓ's head layers inside `fork.branch(ℓ)` right after the block of its feature, and
        `fork.join()` before the head's tail (`branches.StreamBranches`). The features and hiddens stay referenced
        until the tail is queued, after the join."""
        x = self.embed(images)
        hidden = [None] * len(self.extract)
        features = []
        try:
            for index, block in enumerate(self.blocks):
                x = block(x)
                for level, layer in enumerate(self.extract):
                    if layer == index:
                        features.append(x)
                        with fork.branch(level):
                            hidden[level] = self.head.level(level, x)
        finally:  # joined even when a layer fails, so a capture ends with its branches rejoined
            fork.join()
        logits = self.head.tail(hidden, grid)
        del features, hidden
        return logits

    def logits_from_grid(self, maps: torch.Tensor) -> torch.Tensor:
        """`forward(images)` from `forward(images, grid=True)` of a seg model: the same upsample, bit for bit (the
        CUDA-graph runner captures the forward up to the grid logits and upsamples after each replay)."""
        return self.head.upsample(maps)
