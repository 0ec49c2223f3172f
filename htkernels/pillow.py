"""Pillow's resize pass order, shared by every implementation of `preprocess`: the engine's numpy path
(`engine.preprocess`), the reference, and the Triton and CUDA launchers.

Plain Python: importing it pulls in neither torch nor Triton, so the torch-free runtime uses it too.
"""

from __future__ import annotations


def vertical_pass_first(height: int, width: int, out_h: int, out_w: int) -> bool:
    """Whether Pillow (13.x) resizes `[height, width]` to `[out_h, out_w]` with the vertical pass first: when both
    passes run and the vertical one shrinks rows more than twice as much as the horizontal one shrinks columns.

    The uint8 rounding between the passes makes the order visible in the result. With one pass skipped the order
    does not matter, and False keeps the launchers on their horizontal-first path (no transposed frame)."""
    return height != out_h and width != out_w and max(height - out_h, 0) > 2 * max(width - out_w, 0)
