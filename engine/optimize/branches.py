"""The head's levels as parallel branches: on CUDA, each level's layers run on a side stream as soon as the block
that produces its feature is done, overlapping the later blocks (inside a CUDA graph capture, forked and joined
branches of the graph), and the head's tail waits for all of them.

Off by default (`HT_ENGINE_HEAD_BRANCHES`, or `head_branches(enabled)` for a block of code, whose choice a CUDA
graph captured inside keeps in every replay) until a GPU run measures it faster: `benchmarks/gpu_check.py`'s `e2e`
section times it as `optimized_branches`. Every tensor a branch reads or makes stays referenced by the forward
until the join, so the caching allocator never hands its memory to another stream while the branch may use it.
"""

from __future__ import annotations

import contextlib
import threading

import torch

from htkernels.envs import Switch

from .. import settings

# HT_ENGINE_HEAD_BRANCHES, which `head_branches(enabled)` overrides for the forwards run inside it.
_WANTED = Switch(settings.HEAD_BRANCHES)
# Side streams per thread and device, made once and reused (a capture forks onto them). Per thread: a branch's
# memory goes back to its stream's cache when freed, and only this thread's next fork (which waits for everything
# queued on its forward's stream) may reuse it.
_STREAMS = threading.local()


def head_branches(enabled: bool):
    """Context manager: run the head's levels as branches (True) or in line (False) inside it, whatever the setting
    says."""
    return _WANTED.forced(enabled)


def wanted(device: torch.device) -> bool:
    """Whether a forward on `device` runs the head's levels as branches: asked for, on a CUDA device, and not while
    torch.export or torch.compile traces it (an artifact's graph has no streams)."""
    if device.type != "cuda" or torch.compiler.is_compiling():
        return False
    return _WANTED.get()


def side_streams(device: torch.device, count: int) -> list:
    """`count` side streams of `device` for this thread (reused across its forwards and captures)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if not hasattr(_STREAMS, "by_device"):
        _STREAMS.by_device = {}
    streams = _STREAMS.by_device.setdefault(index, [])
    while len(streams) < count:
        streams.append(torch.cuda.Stream(torch.device("cuda", index)))
    return streams[:count]


class StreamBranches:
    """Fork-join of the head's levels for one forward: `branch(level)` runs its block on that level's side stream,
    after everything queued so far on the forward's stream; `join()` makes the forward's stream wait for every
    branch."""

    def __init__(self, device: torch.device, count: int):
        self.main = torch.cuda.current_stream(device)
        self.streams = side_streams(device, count)

    @contextlib.contextmanager
    def branch(self, level: int):
        stream = self.streams[level]
        stream.wait_stream(self.main)
        with torch.cuda.stream(stream):
            yield

    def join(self) -> None:
        for stream in self.streams:
            self.main.wait_stream(stream)
