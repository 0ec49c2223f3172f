"""Model configuration: the arch table of the design card and the JSON stored in every package."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from .errors import ConfigError

TASKS = ("seg", "cls")
FILTER_KINDS = ("channel", "spectral")
ACTIVATIONS = ("gelu", "quick_gelu")

# The authors' training preprocessing: grayscale, PIL bicubic antialiased resize, [0,1], no mean/std, 3 channels.
AUTHORS_PREPROCESSING = {
    "grayscale": True,
    "resize": "pil_bicubic",
    "size": 224,
    "scale": 1.0 / 255.0,
    "mean": None,
    "std": None,
    "channels": 3,
}


# The JSON types of every config field (a bool is not an int here, an int is a float): checked before any field is
# used, so an edited config fails with the field's name instead of a TypeError deep in the model.
_INT, _FLOAT, _STR, _BOOL = "integer", "number", "string", "boolean"
FIELD_TYPES = {
    "arch": _STR, "task": _STR, "num_classes": _INT, "classes": [_STR], "image_size": _INT, "patch_size": _INT,
    "width": _INT, "layers": _INT, "heads": _INT, "mlp_ratio": _INT, "act": _STR, "ln_eps": _FLOAT,
    "ln_pre": _BOOL, "patch_bias": _BOOL, "cls_head": _STR, "adapter_layers": [_INT], "bottleneck": _INT,
    "filter_kind": _STR, "extract_layers": [_INT], "head_dim": _INT, "adapter_ln_eps": _FLOAT, "preprocessing": dict,
}
POSITIVE_FIELDS = ("num_classes", "image_size", "patch_size", "width", "layers", "heads", "mlp_ratio", "bottleneck",
                   "head_dim")
PREPROCESSING_TYPES = {"grayscale": _BOOL, "resize": _STR, "size": _INT, "scale": _FLOAT, "mean": (_FLOAT, None),
                       "std": (_FLOAT, None), "channels": _INT}
RESIZES = ("pil_bicubic",)
CLS_HEADS = ("linear", "mlp")


def _is(value, kind) -> bool:
    if kind is None:
        return value is None
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == _STR:
        return isinstance(value, str)
    return isinstance(value, kind)


def _describe(kind) -> str:
    return {None: "null", dict: "an object", list: "a list", _INT: "an integer", _FLOAT: "a finite number"}.get(kind, f"a {kind}")


def check_type(where: str, value, kind) -> None:
    """`ConfigError` naming `where` unless `value` has the JSON type `kind` (a list `[kind]` for a list of them, a
    tuple for alternatives)."""
    if isinstance(kind, list):
        ok = isinstance(value, list) and all(_is(item, kind[0]) for item in value)
        expected = f"a list of {kind[0]}s"
    elif isinstance(kind, tuple):
        ok = any(_is(value, alternative) for alternative in kind)
        expected = " or ".join(_describe(k) for k in kind)
    else:
        ok = _is(value, kind)
        expected = _describe(kind)
    if not ok:
        raise ConfigError(f"config field {where} must be {expected}, got {value!r}")


def validate_preprocessing(pre) -> None:
    """`ConfigError` naming the field unless `pre` is a preprocessing record this engine runs."""
    check_type("preprocessing", pre, dict)
    unknown = set(pre) - set(PREPROCESSING_TYPES)
    if unknown:
        raise ConfigError(f"unknown preprocessing fields {sorted(unknown)}; expected {sorted(PREPROCESSING_TYPES)}")
    for name, kind in PREPROCESSING_TYPES.items():
        if name not in pre:
            raise ConfigError(f"preprocessing lacks the field {name!r}")
        check_type(f"preprocessing.{name}", pre[name], kind)
    if pre["resize"] not in RESIZES:
        raise ConfigError(f"preprocessing.resize {pre['resize']!r} is not supported; expected one of {RESIZES}")
    if pre["channels"] != 3:
        raise ConfigError(f"preprocessing.channels must be 3 (the ViT's input), got {pre['channels']}")
    if not pre["scale"] > 0:
        raise ConfigError(f"preprocessing.scale must be > 0, got {pre['scale']}")
    if (pre["mean"] is None) != (pre["std"] is None) or (pre["std"] is not None and not pre["std"] > 0):
        raise ConfigError(f"preprocessing mean and std must both be null or both numbers (std > 0), got "
                          f"mean={pre['mean']!r}, std={pre['std']!r}")


@dataclass(frozen=True)
class ArchSpec:
    """What differs between the backbone families (key layout, activation, norms, biases, head form)."""

    name: str
    family: str  # "timm" | "openai" | "open_clip"
    act: str  # "gelu" (erf) | "quick_gelu"
    ln_eps: float
    ln_pre: bool
    patch_bias: bool
    cls_head: str  # "linear" (timm-style) | "mlp" (OpenAI-style)


ARCHS = {
    "biomedclip-vit-b16": ArchSpec("biomedclip-vit-b16", "timm", "gelu", 1e-6, False, True, "linear"),
    "openai-clip-vit-b16": ArchSpec("openai-clip-vit-b16", "openai", "quick_gelu", 1e-5, True, False, "mlp"),
    "metaclip-vit-b16": ArchSpec("metaclip-vit-b16", "open_clip", "quick_gelu", 1e-5, True, False, "linear"),
    "unimedclip-vit-b16": ArchSpec("unimedclip-vit-b16", "open_clip", "quick_gelu", 1e-5, True, False, "linear"),
}


def arch_spec(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        raise ConfigError(f"unknown arch {name!r}; expected one of: {', '.join(ARCHS)}") from None


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model from a package's tensors."""

    arch: str
    task: str
    num_classes: int
    classes: list = field(default_factory=list)
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: int = 4
    act: str = ""
    ln_eps: float = 0.0
    ln_pre: bool = False
    patch_bias: bool = False
    cls_head: str = ""
    adapter_layers: list = field(default_factory=lambda: list(range(12)))
    bottleneck: int = 64
    filter_kind: str = "channel"
    extract_layers: list = field(default_factory=lambda: [3, 6, 9])
    head_dim: int = 512
    adapter_ln_eps: float = 1e-5
    preprocessing: dict = field(default_factory=lambda: dict(AUTHORS_PREPROCESSING))

    @classmethod
    def for_arch(cls, arch: str, task: str, num_classes: int | None = None, **overrides) -> "ModelConfig":
        spec = arch_spec(arch)
        if num_classes is None:
            num_classes = 2
        traits = dict(act=spec.act, ln_eps=spec.ln_eps, ln_pre=spec.ln_pre, patch_bias=spec.patch_bias,
                      cls_head=spec.cls_head)
        traits.update(overrides)
        cfg = cls(arch=arch, task=task, num_classes=num_classes, **traits)
        if "preprocessing" not in overrides:
            cfg.preprocessing["size"] = cfg.image_size
        if not cfg.classes:
            cfg.classes = ["background", "lesion"] if (task == "seg" and num_classes == 2) else [
                f"class_{i}" for i in range(num_classes)]
        cfg.validate()
        return cfg

    @property
    def family(self) -> str:
        return arch_spec(self.arch).family

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid + 1

    def validate(self) -> None:
        for name, kind in FIELD_TYPES.items():
            check_type(name, getattr(self, name), kind)
        for name in POSITIVE_FIELDS:
            if getattr(self, name) < 1:
                raise ConfigError(f"config field {name} must be >= 1, got {getattr(self, name)}")
        if self.ln_eps <= 0 or self.adapter_ln_eps <= 0:
            raise ConfigError(f"LayerNorm eps must be > 0, got ln_eps={self.ln_eps}, "
                              f"adapter_ln_eps={self.adapter_ln_eps}")
        validate_preprocessing(self.preprocessing)
        arch_spec(self.arch)
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if len(self.classes) != self.num_classes:
            raise ConfigError(f"{len(self.classes)} class names given for num_classes={self.num_classes}")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"class names must be distinct, got {self.classes}")
        if self.cls_head not in CLS_HEADS:
            raise ConfigError(f"unknown cls_head {self.cls_head!r}; expected one of {CLS_HEADS}")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.act!r}; expected one of {ACTIVATIONS}")
        if self.filter_kind not in FILTER_KINDS:
            raise ConfigError(f"unknown filter kind {self.filter_kind!r}; expected one of {FILTER_KINDS}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.bottleneck % 4:
            raise ConfigError(f"bottleneck {self.bottleneck} must be divisible by 4 (noise estimator r -> r/4)")
        if self.preprocessing.get("size") != self.image_size:
            raise ConfigError(f"preprocessing size {self.preprocessing.get('size')} differs from the model's "
                              f"image_size {self.image_size}")
        for name in ("adapter_layers", "extract_layers"):
            bad = [i for i in getattr(self, name) if not 0 <= i < self.layers]
            if bad:
                raise ConfigError(f"{name} has layer indices {bad} outside 0..{self.layers - 1}")
        if not self.extract_layers:
            raise ConfigError("extract_layers must name at least one layer")
        if len(set(self.adapter_layers)) != len(self.adapter_layers):
            raise ConfigError(f"adapter_layers repeats a layer (one adapter per block): {self.adapter_layers}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config fields {sorted(unknown)}; this engine knows {sorted(known)}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in data and f.name in
                         ("arch", "task", "num_classes"))
        if missing:
            raise ConfigError(f"config lacks the fields {missing}")
        cfg = cls(**data)
        cfg.validate()
        return cfg
