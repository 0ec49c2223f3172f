"""Shared test fixtures: small configs of every arch (fast on 2 cores) and seeded tensors."""

from __future__ import annotations

import numpy as np
import torch

from engine.config import ARCHS, ModelConfig
from engine.synthetic import synthetic_frame
from engine.weights import random_package_tensors

ALL_ARCHS = sorted(ARCHS)
# The shapes of the frame-path issue: gray 480×640, RGB 600×800, gray 1080×1920, and two tiny ones.
FRAMES = [((480, 640), False), ((600, 800), True), ((1080, 1920), False), ((1, 1), False), ((7, 3), True)]


def small_config(arch: str, task: str = "seg", filter_kind: str = "channel", num_classes: int = 3,
                 image_size: int = 112, **overrides) -> ModelConfig:
    """A ViT with the family's traits but tiny dims: 7x7 grid (odd), 4 layers, width 48, bottleneck 16."""
    fields = dict(width=48, layers=4, heads=4, bottleneck=16, head_dim=24, image_size=image_size, patch_size=16,
                  extract_layers=[1, 2, 3], adapter_layers=[0, 1, 2, 3], filter_kind=filter_kind)
    fields.update(overrides)
    return ModelConfig.for_arch(arch, task, num_classes, **fields)


def small_tensors(cfg: ModelConfig, seed: int = 0) -> dict:
    return random_package_tensors(cfg, seed=seed, calibrate=False)


def random_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def seeded_frame(shape, rgb, seed):
    """A seeded uint8 frame: synthetic ultrasound (noise below 17 pixels a side), RGB as the gray one tinted."""
    rng = np.random.default_rng(seed)
    gray = synthetic_frame(*shape, seed=seed)[0] if min(shape) > 16 else rng.integers(0, 256, shape, dtype=np.uint8)
    if not rgb:
        return gray
    tint = rng.integers(-20, 20, size=(1, 1, 3))
    return np.clip(gray[..., None].astype(np.int16) + tint, 0, 255).astype(np.uint8)


_TORCH_BLOCKED_PRELUDE = '''
import sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, BlockTorch())
'''
_TORCH_BLOCKED_CODA = '''
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok")
'''


def run_without_torch(body: str, cwd) -> None:
    """Run `body` in a fresh interpreter where importing torch fails, and assert it ran to the end with torch never
    imported (the torch-free runtime's promise)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = _TORCH_BLOCKED_PRELUDE + body + _TORCH_BLOCKED_CODA
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=cwd)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def frame_packages(root) -> dict:
    """Small seeded packages of the frame-path tests: 2-class seg, 3-class seg and 3-class cls, by name."""
    from engine.package import save_package

    out = {}
    for task, classes in (("seg", 2), ("seg3", 3), ("cls", 3)):
        cfg = small_config("biomedclip-vit-b16", task[:3], num_classes=classes)
        out[task] = root / f"{task}.htpkg"
        save_package(out[task], cfg, small_tensors(cfg, seed=31))
    return out


def tiny_seg_package(path, arch: str = "openai-clip-vit-b16", num_classes: int = 2, seed: int = 3):
    """A two-block 64×64 seg package at `path` (the CLI and stream tests' model: fast to load and run)."""
    from engine.config import AUTHORS_PREPROCESSING
    from engine.package import save_package

    cfg = small_config(arch, task="seg", num_classes=num_classes, image_size=64, layers=2, extract_layers=[0, 1],
                       adapter_layers=[0, 1], preprocessing={**AUTHORS_PREPROCESSING, "size": 64})
    save_package(path, cfg, small_tensors(cfg, seed=seed))
    return path
