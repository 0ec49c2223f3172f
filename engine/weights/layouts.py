"""Where every package tensor lives in the authors' files (design card §2).

A layout entry is `(section, source_key, package_key)`: `section` is `"backbone"` (the open_clip/OpenAI CLIP
state dict) or one of the adapter file's sub-dicts (`reduces`, `blocks`, `seg_head`, `cls_head`, `mona`).
Tensors are copied unchanged except that the timm family stores `cls_token`/`pos_embed` with leading unit
dims, which the package drops (a reshape, values bit-identical).
"""

from __future__ import annotations

from ..config import ModelConfig

ADAPTER_SUFFIXES = {
    "gamma": "gamma",
    "gammax": "gammax",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
    "project1.weight": "project1.weight",
    "project1.bias": "project1.bias",
    "project2.weight": "project2.weight",
    "project2.bias": "project2.bias",
    "adapter_conv.freq_filter": "spatial.freq_filter",
    "adapter_conv.conv1.weight": "spatial.dw3.weight",
    "adapter_conv.conv1.bias": "spatial.dw3.bias",
    "adapter_conv.conv2.weight": "spatial.dw5.weight",
    "adapter_conv.conv2.bias": "spatial.dw5.bias",
    "adapter_conv.conv3.weight": "spatial.dw7.weight",
    "adapter_conv.conv3.bias": "spatial.dw7.bias",
    "adapter_conv.projector.weight": "spatial.projector.weight",
    "adapter_conv.projector.bias": "spatial.projector.bias",
    "adapter_conv.noise_estimator.1.weight": "spatial.noise1.weight",
    "adapter_conv.noise_estimator.1.bias": "spatial.noise1.bias",
    "adapter_conv.noise_estimator.3.weight": "spatial.noise2.weight",
    "adapter_conv.noise_estimator.3.bias": "spatial.noise2.bias",
}

MONA_PREFIX = {
    "timm": "clip_model.visual.trunk.blocks.{i}.mona.clip_mona.",
    "open_clip": "clip_model.visual.transformer.resblocks.{i}.mona.clip_mona.",
    "openai": "clip_model.visual.transformer.resblocks.{i}.mona.",
}

_TIMM_BLOCK = {
    "norm1": "norm1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "norm2": "norm2",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_OPENAI_BLOCK = {
    "ln_1": "norm1", "attn.out_proj": "attn.proj", "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}

# Backbone keys that exist in real checkpoints but reach no output of the HT model.
IGNORED_BACKBONE_KEYS = {
    "timm": ("visual.trunk.norm.", "visual.trunk.fc_norm.", "visual.trunk.head.", "visual.head."),
    "openai": ("visual.ln_post.", "visual.proj"),
    "open_clip": ("visual.ln_post.", "visual.proj"),
}
# A backbone saved from a model with adapters injected carries them under `...blocks.{i}.mona.`; the adapter file
# is authoritative for them (the authors' evaluation overwrites them from it), so the backbone's copies are ignored.
ADAPTER_MARKER = ".mona."


def _backbone_entries(cfg: ModelConfig) -> list:
    entries = []
    family = cfg.family
    if family == "timm":
        root = "visual.trunk."
        entries.append((root + "patch_embed.proj.weight", "backbone.patch_embed.weight"))
        entries.append((root + "patch_embed.proj.bias", "backbone.patch_embed.bias"))
        entries.append((root + "cls_token", "backbone.cls_token"))
        entries.append((root + "pos_embed", "backbone.pos_embed"))
        for i in range(cfg.layers):
            for theirs, ours in _TIMM_BLOCK.items():
                for param in ("weight", "bias"):
                    entries.append((f"{root}blocks.{i}.{theirs}.{param}", f"backbone.blocks.{i}.{ours}.{param}"))
    else:
        root = "visual."
        entries.append((root + "conv1.weight", "backbone.patch_embed.weight"))
        entries.append((root + "class_embedding", "backbone.cls_token"))
        entries.append((root + "positional_embedding", "backbone.pos_embed"))
        entries.append((root + "ln_pre.weight", "backbone.ln_pre.weight"))
        entries.append((root + "ln_pre.bias", "backbone.ln_pre.bias"))
        for i in range(cfg.layers):
            block = f"{root}transformer.resblocks.{i}."
            ours = f"backbone.blocks.{i}."
            entries.append((block + "attn.in_proj_weight", ours + "attn.qkv.weight"))
            entries.append((block + "attn.in_proj_bias", ours + "attn.qkv.bias"))
            for theirs, mine in _OPENAI_BLOCK.items():
                for param in ("weight", "bias"):
                    entries.append((f"{block}{theirs}.{param}", f"{ours}{mine}.{param}"))
    return [("backbone", theirs, ours) for theirs, ours in entries]


def _head_entries(cfg: ModelConfig) -> list:
    entries = []
    for k in range(len(cfg.extract_layers)):
        for param in ("weight", "bias"):
            entries.append(("reduces", f"{k}.{param}", f"head.reduces.{k}.{param}"))
            for index in (0, 1, 3):
                entries.append(("blocks", f"{k}.{index}.{param}", f"head.levels.{k}.{index}.{param}"))
    for param in ("weight", "bias"):
        if cfg.task == "seg":
            entries.append(("seg_head", f"1.{param}", f"head.out.{param}"))
        elif cfg.cls_head == "mlp":
            entries.append(("cls_head", f"2.{param}", f"head.hidden.{param}"))
            entries.append(("cls_head", f"5.{param}", f"head.out.{param}"))
        else:
            entries.append(("cls_head", f"3.{param}", f"head.out.{param}"))
    return entries


def mona_entries(cfg: ModelConfig, layers) -> list:
    prefix = MONA_PREFIX[cfg.family]
    return [
        ("mona", prefix.format(i=i) + theirs, f"backbone.blocks.{i}.adapter.{ours}")
        for i in layers
        for theirs, ours in ADAPTER_SUFFIXES.items()
    ]


def authors_layout(cfg: ModelConfig) -> list:
    """Every `(section, source_key, package_key)` of a model with this config."""
    return _backbone_entries(cfg) + _head_entries(cfg) + mona_entries(cfg, cfg.adapter_layers)
