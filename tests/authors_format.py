"""Writes package tensors in the authors' file layouts, with key names spelled out independently of the engine's
layout table: a backbone state dict as open_clip/OpenAI CLIP save it and a `best_model.pth` adapter dict."""

from __future__ import annotations

import torch

TIMM_BLOCK = [("norm1", "norm1"), ("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"), ("norm2", "norm2"),
              ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]
OPENAI_BLOCK = [("ln_1", "norm1"), ("attn.out_proj", "attn.proj"), ("ln_2", "norm2"), ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2")]
MONA = [("gamma", "gamma"), ("gammax", "gammax"), ("norm.weight", "norm.weight"), ("norm.bias", "norm.bias"),
        ("project1.weight", "project1.weight"), ("project1.bias", "project1.bias"),
        ("project2.weight", "project2.weight"), ("project2.bias", "project2.bias"),
        ("adapter_conv.freq_filter", "spatial.freq_filter"),
        ("adapter_conv.conv1.weight", "spatial.dw3.weight"), ("adapter_conv.conv1.bias", "spatial.dw3.bias"),
        ("adapter_conv.conv2.weight", "spatial.dw5.weight"), ("adapter_conv.conv2.bias", "spatial.dw5.bias"),
        ("adapter_conv.conv3.weight", "spatial.dw7.weight"), ("adapter_conv.conv3.bias", "spatial.dw7.bias"),
        ("adapter_conv.projector.weight", "spatial.projector.weight"),
        ("adapter_conv.projector.bias", "spatial.projector.bias"),
        ("adapter_conv.noise_estimator.1.weight", "spatial.noise1.weight"),
        ("adapter_conv.noise_estimator.1.bias", "spatial.noise1.bias"),
        ("adapter_conv.noise_estimator.3.weight", "spatial.noise2.weight"),
        ("adapter_conv.noise_estimator.3.bias", "spatial.noise2.bias")]


def authors_files(cfg, t: dict, with_text_tower: bool = True):
    """`(backbone_state_dict, adapter_dict)`; every written tensor is a clone of a package tensor (same bits)."""
    backbone = {}
    if cfg.family == "timm":
        backbone["visual.trunk.patch_embed.proj.weight"] = t["backbone.patch_embed.weight"].clone()
        backbone["visual.trunk.patch_embed.proj.bias"] = t["backbone.patch_embed.bias"].clone()
        backbone["visual.trunk.cls_token"] = t["backbone.cls_token"].clone().reshape(1, 1, -1)
        backbone["visual.trunk.pos_embed"] = t["backbone.pos_embed"].clone().reshape(1, *t["backbone.pos_embed"].shape)
        for i in range(cfg.layers):
            for theirs, ours in TIMM_BLOCK:
                for p in ("weight", "bias"):
                    backbone[f"visual.trunk.blocks.{i}.{theirs}.{p}"] = t[f"backbone.blocks.{i}.{ours}.{p}"].clone()
        backbone["visual.trunk.norm.weight"] = torch.ones(cfg.width)
        backbone["visual.trunk.norm.bias"] = torch.zeros(cfg.width)
        backbone["visual.head.proj.weight"] = torch.randn(16, cfg.width)
        mona_prefix = "clip_model.visual.trunk.blocks.{i}.mona.clip_mona."
    else:
        backbone["visual.conv1.weight"] = t["backbone.patch_embed.weight"].clone()
        backbone["visual.class_embedding"] = t["backbone.cls_token"].clone()
        backbone["visual.positional_embedding"] = t["backbone.pos_embed"].clone()
        backbone["visual.ln_pre.weight"] = t["backbone.ln_pre.weight"].clone()
        backbone["visual.ln_pre.bias"] = t["backbone.ln_pre.bias"].clone()
        for i in range(cfg.layers):
            block = f"visual.transformer.resblocks.{i}."
            backbone[block + "attn.in_proj_weight"] = t[f"backbone.blocks.{i}.attn.qkv.weight"].clone()
            backbone[block + "attn.in_proj_bias"] = t[f"backbone.blocks.{i}.attn.qkv.bias"].clone()
            for theirs, ours in OPENAI_BLOCK:
                for p in ("weight", "bias"):
                    backbone[f"{block}{theirs}.{p}"] = t[f"backbone.blocks.{i}.{ours}.{p}"].clone()
        backbone["visual.ln_post.weight"] = torch.ones(cfg.width)
        backbone["visual.ln_post.bias"] = torch.zeros(cfg.width)
        backbone["visual.proj"] = torch.randn(cfg.width, 16)
        mona_prefix = ("clip_model.visual.transformer.resblocks.{i}.mona.clip_mona." if cfg.family == "open_clip"
                       else "clip_model.visual.transformer.resblocks.{i}.mona.")
    if with_text_tower:
        backbone["logit_scale"] = torch.tensor(4.6)
        backbone["text.transformer.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
        backbone["token_embedding.weight"] = torch.randn(10, 8)
    reduces, blocks = {}, {}
    for k in range(len(cfg.extract_layers)):
        for p in ("weight", "bias"):
            reduces[f"{k}.{p}"] = t[f"head.reduces.{k}.{p}"].clone()
            for index in (0, 1, 3):
                blocks[f"{k}.{index}.{p}"] = t[f"head.levels.{k}.{index}.{p}"].clone()
    head = {}
    for p in ("weight", "bias"):
        if cfg.task == "seg":
            head[f"1.{p}"] = t[f"head.out.{p}"].clone()
        elif cfg.family == "openai":
            head[f"2.{p}"] = t[f"head.hidden.{p}"].clone()
            head[f"5.{p}"] = t[f"head.out.{p}"].clone()
        else:
            head[f"3.{p}"] = t[f"head.out.{p}"].clone()
    mona = {}
    for i in cfg.adapter_layers:
        for theirs, ours in MONA:
            mona[mona_prefix.format(i=i) + theirs] = t[f"backbone.blocks.{i}.adapter.{ours}"].clone()
    adapter = {"reduces": reduces, "blocks": blocks, f"{cfg.task}_head": head, "mona": mona}
    return backbone, adapter
