"""Model configuration: the arch table of the design card and the JSON stored in every package."""

from __future__ import annotations

import dataclasses
import json
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
        arch_spec(self.arch)
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ConfigError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if len(self.classes) != self.num_classes:
            raise ConfigError(f"{len(self.classes)} class names given for num_classes={self.num_classes}")
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

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config fields {sorted(unknown)}; this engine knows {sorted(known)}")
        cfg = cls(**data)
        cfg.validate()
        return cfg
