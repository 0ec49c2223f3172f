"""Synthetic B-mode-like ultrasound frames for tests and the demo (no patient data ever enters the repository).

A frame has Rayleigh speckle over a depth-dependent gain, hypoechoic elliptical lesions (the ground-truth mask),
a bright reflector with an acoustic shadow below it, and periodic horizontal reverberation bands.
"""

from __future__ import annotations

import numpy as np


def synthetic_frame(height: int = 480, width: int = 640, seed: int = 0, lesions: int = 2):
    """`(frame uint8 [H,W], lesion mask bool [H,W])`, deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    echogenicity = np.full((height, width), 1.0, dtype=np.float32)
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(lesions):
        cy, cx = rng.uniform(0.3, 0.75), rng.uniform(0.2, 0.8)
        ry, rx = rng.uniform(0.06, 0.15), rng.uniform(0.06, 0.18)
        inside = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
        mask |= inside
        echogenicity[inside] *= rng.uniform(0.15, 0.35)
    reflector_x = rng.uniform(0.2, 0.8)
    reflector_y = rng.uniform(0.15, 0.3)
    reflector = (np.abs(rows - reflector_y) < 0.01) & (np.abs(cols - reflector_x) < 0.06)
    echogenicity[reflector] = 4.0
    shadow = (rows > reflector_y) & (np.abs(cols - reflector_x) < 0.05)
    echogenicity[shadow] *= 0.2
    bands = 1.0 + 0.25 * (np.sin(2 * np.pi * rows * rng.uniform(8, 14)) > 0.7)
    gain = 1.2 - 0.6 * rows
    speckle = rng.rayleigh(scale=1.0, size=(height, width)).astype(np.float32)
    image = 70.0 * echogenicity * bands * gain * speckle
    return np.clip(image, 0, 255).astype(np.uint8), mask
