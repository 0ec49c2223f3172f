"""Tensors that depend on weights alone, computed once per weights instead of at every launch.

Some launchers turn a weight into another tensor before their kernels run (the spectral filter's impulse response,
`adapter_spatial`; the LayerNorm-folded GEMM weights, `norm_linear`). Those tensors change only when the weights do,
so they are kept per source tensor and reused while every source is the same live tensor with the same storage
(`data_ptr`), shape, strides, dtype and version counter (every in-place write bumps it: `copy_`, `mul_`, an optimizer
step). Anything else — another tensor, a freed one, an in-place change — computes afresh; an entry goes when one of
its source tensors is freed.

Never kept: what is derived from inference tensors (made under `torch.inference_mode`, they have no version counter,
so an in-place change could not be seen: computed at every call), and what is computed while a CUDA graph is being
captured on the current stream (the capture records the kernels without running them, so the tensor holds no values
until a replay: it serves that call only). A kept tensor is read during a capture like any weight: the CUDA-graph
runner's warm-up runs come before its capture, so the captured graph reads the cached tensor and replays without the
derivation.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable

import torch


def _stamp(tensor: torch.Tensor) -> tuple:
    return (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype, tensor.device,
            tensor._version)


def capturing(sources: tuple) -> bool:
    """Whether a CUDA graph is being captured on the current stream of a device of `sources`."""
    return any(t.is_cuda for t in sources) and torch.cuda.is_current_stream_capturing()


class WeightsCache:
    """`get(sources, *args)` = `compute(*sources, *args)`, remembered per (source tensors, args) while the sources
    are unchanged (module docstring). `args` are hashable launch parameters (grid sizes, flags)."""

    def __init__(self, compute: Callable[..., Any]):
        self._compute = compute
        self._entries: dict = {}  # (source ids, args) -> (weak refs, stamps, value)
        # Re-entrant: freeing a tensor while computing (or storing) runs `_drop` on this thread.
        self._lock = threading.RLock()

    def get(self, sources: tuple, *args) -> Any:
        if any(t.is_inference() for t in sources):
            return self._compute(*sources, *args)
        key = (tuple(id(t) for t in sources), args)
        stamps = tuple(_stamp(t) for t in sources)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                refs, kept, value = entry
                if kept == stamps and all(ref() is t for ref, t in zip(refs, sources)):
                    return value
            value = self._compute(*sources, *args)
            if capturing(sources):
                return value
            refs = tuple(weakref.ref(t, lambda _, key=key: self._drop(key)) for t in sources)
            self._entries[key] = (refs, stamps, value)
            return value

    def _drop(self, key: tuple) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
