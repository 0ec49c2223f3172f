"""Import of the authors' checkpoints (backbone state dict + `best_model.pth`) into package tensors.

Only `torch.load(..., weights_only=True)`, safetensors, or the restricted TorchScript reader of
`engine.weights.torchscript` is ever used: a pickle or archive that would run code is refused. Every problem of a checkpoint is collected and reported at
once: missing, unexpected and misshaped keys per section, with counts.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import ModelConfig, arch_spec
from ..errors import CheckpointError, ConfigError, summarize_names
from ..model import HTModel
from .layouts import ADAPTER_MARKER, IGNORED_BACKBONE_KEYS, MONA_PREFIX, authors_layout
from .torchscript import is_torchscript_archive, read_torchscript_state_dict

HEAD_SECTIONS = ("seg_head", "cls_head")
ADAPTER_SECTIONS = ("reduces", "blocks", "mona")


def load_checkpoint_file(path, what: str):
    """The object stored in a checkpoint file, loaded without executing any code from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if is_torchscript_archive(path):
            return read_torchscript_state_dict(path)
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # torch/safetensors raise many types for truncated, garbled or unsafe files
        raise CheckpointError(
            f"{what} file {path} could not be loaded safely (truncated or corrupt file, or a pickle that would run "
            f"code, which is refused: only tensors and plain containers are accepted): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def _plain_state_dict(obj, what: str, path) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} file {path} holds a {type(obj).__name__}, expected a state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _mona_layers(cfg_family: str, keys) -> tuple[list, list]:
    pattern = re.compile("^" + re.escape(MONA_PREFIX[cfg_family]).replace(r"\{i\}", r"(\d+)"))
    layers, foreign = set(), []
    for key in keys:
        match = pattern.match(key)
        if match:
            layers.add(int(match.group(1)))
        else:
            foreign.append(key)
    return sorted(layers), foreign


def _section_problems(section: str, expected: dict, provided: dict, ignore=()) -> list:
    missing = [k for k in expected if k not in provided]
    unexpected = [k for k in provided if k not in expected and not k.startswith(ignore)]
    misshaped = []
    for key, shape in expected.items():
        value = provided.get(key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            misshaped.append(f"{key} (not a tensor: {type(value).__name__})")
        elif tuple(value.shape) != shape:
            misshaped.append(f"{key} {tuple(value.shape)}≠{shape}")
        elif not value.is_floating_point():
            misshaped.append(f"{key} (dtype {value.dtype}, expected floating point)")
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped)):
        if names:
            problems.append(f"{section}: {len(names)} {label} key(s): {summarize_names(names)}")
    return problems


def _source_shape(cfg: ModelConfig, package_key: str, shape: tuple) -> tuple:
    if cfg.family == "timm" and package_key in ("backbone.cls_token", "backbone.pos_embed"):
        return (1,) * (3 - len(shape)) + shape
    return shape


def import_checkpoints(arch: str, backbone_path, adapter_path, task: str, num_classes: int | None = None,
                       dims: dict | None = None, activation: str | None = None):
    """`(ModelConfig, package tensors)` from a backbone state dict and an authors' `best_model.pth`.

    `activation` overrides the arch's MLP activation ("gelu" or "quick_gelu") for backbones trained with the other
    one. `dims` overrides the arch's model dimensions (width, layers, ...); the CLI never passes it (tests use it
    to exercise the real key mapping on tiny models)."""
    spec = arch_spec(arch)
    if task not in ("seg", "cls"):
        raise ConfigError(f"unknown task {task!r}; expected 'seg' or 'cls'")
    backbone = _plain_state_dict(load_checkpoint_file(backbone_path, "backbone"), "backbone", backbone_path)
    adapter = load_checkpoint_file(adapter_path, "adapter")
    if not isinstance(adapter, dict):
        raise CheckpointError(f"adapter file {adapter_path} holds a {type(adapter).__name__}, expected the dict "
                              f"{{'reduces','blocks','seg_head'|'cls_head','mona'}}")
    head_section = f"{task}_head"
    other_head = "cls_head" if task == "seg" else "seg_head"
    if head_section not in adapter and other_head in adapter:
        raise CheckpointError(f"adapter file {adapter_path} holds a {other_head!r} but --task {task} needs "
                              f"{head_section!r}: use --task {other_head[:3]}")
    wanted = set(ADAPTER_SECTIONS) | {head_section}
    absent = sorted(wanted - set(adapter))
    extra = sorted(set(adapter) - wanted)
    if absent or extra:
        raise CheckpointError(f"adapter file {adapter_path}: top-level keys missing {absent}, unexpected {extra}; "
                              f"expected exactly {sorted(wanted)}")
    for section in wanted:
        if not isinstance(adapter[section], dict):
            raise CheckpointError(f"adapter file {adapter_path}: {section!r} is a {type(adapter[section]).__name__}, "
                                  f"expected a state dict")
    mona = {(k if k.startswith("clip_model.") else "clip_model." + k): v for k, v in adapter["mona"].items()}
    layers, foreign = _mona_layers(spec.family, mona)
    out_weight = adapter[head_section].get("1.weight" if task == "seg" else ("5.weight" if spec.cls_head == "mlp"
                                                                                   else "3.weight"))
    found_classes = int(out_weight.shape[0]) if isinstance(out_weight, torch.Tensor) else None
    if num_classes is not None and found_classes is not None and num_classes != found_classes:
        raise CheckpointError(f"--num-classes {num_classes} but the {head_section} in {adapter_path} has "
                              f"{found_classes} outputs")
    classes = num_classes or found_classes or 2
    try:
        extra = dict(dims or {})
        if activation is not None:
            extra["act"] = activation
        cfg = ModelConfig.for_arch(arch, task, classes, adapter_layers=layers, **extra)
    except ConfigError as exc:
        raise CheckpointError(f"adapter file {adapter_path}: {exc}") from exc
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in HTModel(cfg).state_dict().items()}

    expected = {section: {} for section in ("backbone", head_section, *ADAPTER_SECTIONS)}
    destination = {}
    for section, source_key, package_key in authors_layout(cfg):
        expected[section][source_key] = _source_shape(cfg, package_key, shapes[package_key])
        destination[(section, source_key)] = package_key
    provided = {
        "backbone": {k: v for k, v in backbone.items() if k.startswith("visual.") and ADAPTER_MARKER not in k},
        head_section: adapter[head_section], "reduces": adapter["reduces"], "blocks": adapter["blocks"], "mona": mona,
    }
    problems = []
    if not provided["backbone"]:
        problems.append(f"backbone file {backbone_path} has no 'visual.*' keys: not an open_clip/OpenAI CLIP state "
                        f"dict")
    for section in expected:
        ignore = IGNORED_BACKBONE_KEYS[spec.family] if section == "backbone" else ()
        problems += _section_problems(section, expected[section], provided[section], ignore)
    if foreign and not any(p.startswith("mona") for p in problems):
        problems.append(f"mona: {len(foreign)} unexpected key(s): {summarize_names(foreign)}")
    if problems:
        raise CheckpointError(f"checkpoints do not match arch {arch!r} ({spec.family} layout), task {task!r}:\n  "
                              + "\n  ".join(problems))

    tensors = {}
    for (section, source_key), package_key in destination.items():
        value = provided[section][source_key]
        tensor = value.detach().to(torch.float32).reshape(shapes[package_key]).contiguous()
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{section} key {source_key} holds NaN or infinite values")
        tensors[package_key] = tensor
    return cfg, tensors
