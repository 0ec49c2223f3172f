"""What every backend returns from `load`: a runner over preprocessed batches (the one type every layer from
`optimize` up to `runtime` shares, so it lives below all of them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class Runner:
    """`run(batch)` maps a float32 `[B,3,S,S]` batch (torch tensor if `uses_torch`, else numpy) to logits."""

    run: Callable
    uses_torch: bool
    device: str
    precision: str
    max_batch: int | None = None
    input_dtype: str = "float32"
