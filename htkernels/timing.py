"""The one device timer: CUDA events around a call on the current stream.

The launch tuner, `engine.bench` and the benchmarks all time device work with `cuda_event_ms`, so a number from one
of them means the same as a number from another.
"""

from __future__ import annotations

from typing import Callable

import torch


def cuda_event_ms(call: Callable[[], object]) -> float:
    """Device time of `call()` in milliseconds: events recorded before and after it on the current CUDA stream,
    then synchronized. The call's own host time counts only where it delays the work it enqueues."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    call()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))
