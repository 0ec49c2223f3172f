"""Arrival counters: int32 counters in device memory through which the programs of one launch find the last of a
group to finish its part (residual_adapter's row tiles, adapter_out's split-K tiles), so that it alone runs what
needs every part: each program stores its part, waits on a barrier of its threads, then adds 1 to its group's
counter (acquire-release, GPU scope); the one that sees the count complete puts it back to 0 and goes on.

Every launch leaves its counters at 0, so they are kept and reused; never freed while kept: a captured CUDA graph
holds their address.
"""

from __future__ import annotations

import threading

import torch

_COUNTERS: dict = {}
_COUNTERS_LOCK = threading.Lock()

# The counters' key for launches captured into CUDA graphs, whichever stream captures them.
GRAPHS = "graphs"


def _counter_keys(op: str, device: torch.device, weight: torch.Tensor, count: int) -> tuple:
    """(the key of eager launches on the current stream, the key of captured launches)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    return tuple((str(device), where, op, weight.data_ptr(), count) for where in (stream, GRAPHS))


def arrival_counters(op: str, device: torch.device, weight: torch.Tensor, count: int) -> torch.Tensor:
    """`count` zeroed int32 arrival counters for one launch of `op` on `device` with weight `weight` (the GEMM's:
    what tells two blocks or two models apart), kept and reused. Launches that may run at the same time get
    different counters: eager launches on two streams, two ops, two blocks or two models. Launches captured into
    CUDA graphs share one set per op, weight and size, whatever stream captures them: graphs of one model replay
    one after the other (the CUDA-graph runner holds a lock), and a capture cannot zero new counters without the
    graph replaying the fill, so each eager launch also makes the captured launches' set. A capture that finds
    none (no eager launch before it) gets its own, zeroed by a fill the graph replays, never kept."""
    eager, graphs = _counter_keys(op, device, weight, count)
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    key = graphs if capturing else eager
    with _COUNTERS_LOCK:
        found = _COUNTERS.get(key)
    if found is not None:
        return found

    def zeros():
        with torch.inference_mode(False):  # a normal tensor, whatever mode the first launch runs in
            return torch.zeros(count, dtype=torch.int32, device=device)

    if capturing:
        return zeros()
    with _COUNTERS_LOCK:
        for k in (graphs, eager):
            if k not in _COUNTERS:
                _COUNTERS[k] = zeros()
        return _COUNTERS[eager]


def reset_counters(op: str, device: torch.device, weight: torch.Tensor, count: int) -> None:
    """Zero the kept counters of `arrival_counters(op, device, weight, count)`, eager (current stream) and captured,
    in stream order: after a launch that may have left them non-zero (a rejected candidate's). Zeroed, not dropped:
    a captured graph may hold their address."""
    with _COUNTERS_LOCK:
        kept = [_COUNTERS.get(key) for key in _counter_keys(op, device, weight, count)]
    for counters in kept:
        if counters is not None:
            counters.zero_()
