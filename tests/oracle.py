"""An independent float64 formulation of the HT model, written from the design card's equations with explicit
matrices and loops (patch embedding by reshaping, attention by explicit softmax, the 2-D DFT as matrix products,
depthwise convolutions as sums over kernel offsets, bilinear upsampling as interpolation matrices)."""

from __future__ import annotations

import math

import torch


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def quick_gelu(x):
    return x / (1.0 + torch.exp(-1.702 * x))


def dft_filter(s, phi_half):
    """irfft2(rfft2(S) ⊙ φ) with DFT matrices; `s` is `[B,h,w,C]` (channels last), φ `[C,h,w//2+1]` complex."""
    _, h, w, _ = s.shape
    n_h = torch.arange(h, dtype=torch.float64)
    n_w = torch.arange(w, dtype=torch.float64)
    k_w = torch.arange(w // 2 + 1, dtype=torch.float64)
    fh = torch.exp(-2j * math.pi * torch.outer(n_h, n_h) / h)
    fw = torch.exp(-2j * math.pi * torch.outer(k_w, n_w) / w)
    spectrum = torch.einsum("uy,byxc,kx->cbuk", fh, s.to(torch.complex128), fw)
    filtered = spectrum * phi_half[:, None]
    rows = torch.einsum("yu,cbuk->cbyk", fh.conj() / h, filtered)
    weight = torch.full((w // 2 + 1,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    basis = torch.exp(2j * math.pi * torch.outer(k_w, n_w) / w)
    out = torch.einsum("cbyk,kx,k->byxc", rows, basis, weight.to(torch.complex128)).real / w
    return out


def depthwise(s, kernel, bias):
    """`s` `[B,h,w,C]`, kernel `[C,1,k,k]`: same-padding depthwise correlation as a sum over offsets."""
    _, h, w, _ = s.shape
    k = kernel.shape[-1]
    pad = k // 2
    padded = torch.nn.functional.pad(s, (0, 0, pad, pad, pad, pad))
    out = torch.zeros_like(s) + bias
    for dy in range(k):
        for dx in range(k):
            out = out + padded[:, dy:dy + h, dx:dx + w, :] * kernel[:, 0, dy, dx]
    return out


def adapter(x, t, prefix, grid, ln_eps=1e-5):
    p = lambda name: t[prefix + name]  # noqa: E731
    mixed = layer_norm(x, p("norm.weight"), p("norm.bias"), ln_eps) * p("gamma") + x * p("gammax")
    z = mixed @ p("project1.weight").T + p("project1.bias")
    batch, _, channels = z.shape
    s = z[:, 1:].reshape(batch, grid, grid, channels)
    phi = p("spatial.freq_filter")
    if phi.dim() == 1:
        filtered = s * phi
    else:
        filtered = dft_filter(s, torch.complex(phi[..., 0], phi[..., 1]))
    pooled = filtered.mean(dim=(1, 2))
    hidden = torch.clamp(pooled @ p("spatial.noise1.weight")[:, :, 0, 0].T + p("spatial.noise1.bias"), min=0)
    logits = hidden @ p("spatial.noise2.weight")[:, :, 0, 0].T + p("spatial.noise2.bias")
    alpha = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    convs = [depthwise(filtered, p(f"spatial.dw{k}.weight"), p(f"spatial.dw{k}.bias")) for k in (3, 5, 7)]
    mixture = sum(alpha[:, i, None, None, None] * convs[i] for i in range(3)) + s
    projected = mixture @ p("spatial.projector.weight")[:, :, 0, 0].T + p("spatial.projector.bias")
    out = (mixture + projected).reshape(batch, grid * grid, channels)
    z = torch.cat([z[:, :1], out], dim=1)
    return x + gelu(z) @ p("project2.weight").T + p("project2.bias")


def bilinear_matrix(in_size, out_size):
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for o in range(out_size):
        src = max((o + 0.5) * in_size / out_size - 0.5, 0.0)
        lo = min(int(math.floor(src)), in_size - 1)
        hi = min(lo + 1, in_size - 1)
        m[o, lo] += 1 - (src - lo)
        m[o, hi] += src - lo
    return m


def forward(cfg, tensors, images):
    t = {k: v.double() for k, v in tensors.items()}
    x_img = images.double()
    batch, size, patch, grid, width = images.shape[0], cfg.image_size, cfg.patch_size, cfg.grid, cfg.width
    patches = x_img.reshape(batch, 3, grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5).reshape(batch, grid * grid, -1)
    x = patches @ t["backbone.patch_embed.weight"].reshape(width, -1).T
    if cfg.patch_bias:
        x = x + t["backbone.patch_embed.bias"]
    x = torch.cat([t["backbone.cls_token"].expand(batch, 1, width), x], dim=1) + t["backbone.pos_embed"]
    if cfg.ln_pre:
        x = layer_norm(x, t["backbone.ln_pre.weight"], t["backbone.ln_pre.bias"], cfg.ln_eps)
    act = gelu if cfg.act == "gelu" else quick_gelu
    heads, head_dim = cfg.heads, width // cfg.heads
    features = {}
    for i in range(cfg.layers):
        b = f"backbone.blocks.{i}."
        h = layer_norm(x, t[b + "norm1.weight"], t[b + "norm1.bias"], cfg.ln_eps)
        qkv = h @ t[b + "attn.qkv.weight"].T + t[b + "attn.qkv.bias"]
        q, k, v = (qkv[..., j * width:(j + 1) * width].reshape(batch, -1, heads, head_dim) for j in range(3))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)
        attended = torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, -1, width)
        x = x + attended @ t[b + "attn.proj.weight"].T + t[b + "attn.proj.bias"]
        h = layer_norm(x, t[b + "norm2.weight"], t[b + "norm2.bias"], cfg.ln_eps)
        x = x + act(h @ t[b + "mlp.fc1.weight"].T + t[b + "mlp.fc1.bias"]) @ t[b + "mlp.fc2.weight"].T + t[
            b + "mlp.fc2.bias"]
        if i in cfg.adapter_layers:
            x = adapter(x, t, b + "adapter.", grid, cfg.adapter_ln_eps)
        features[i] = x
    fused = 0
    for level, layer in enumerate(cfg.extract_layers):
        h = features[layer][:, 1:] @ t[f"head.reduces.{level}.weight"].T + t[f"head.reduces.{level}.bias"]
        m = f"head.levels.{level}."
        h = layer_norm(h, t[m + "0.weight"], t[m + "0.bias"], 1e-5)
        h = gelu(h @ t[m + "1.weight"].T + t[m + "1.bias"]) @ t[m + "3.weight"].T + t[m + "3.bias"]
        fused = fused + h
    if cfg.task == "seg":
        maps = fused.reshape(batch, grid, grid, -1)
        up = bilinear_matrix(grid, size)
        maps = torch.einsum("Yy,byxc,Xx->bYXc", up, maps, up)
        logits = maps @ t["head.out.weight"][:, :, 0, 0].T + t["head.out.bias"]
        return logits.permute(0, 3, 1, 2)
    pooled = fused.mean(1)
    if cfg.cls_head == "mlp":
        pooled = torch.clamp(pooled @ t["head.hidden.weight"].T + t["head.hidden.bias"], min=0)
    return pooled @ t["head.out.weight"].T + t["head.out.bias"]
