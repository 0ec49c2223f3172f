"""What every backend returns from `load`: a runner over preprocessed batches (the one type every layer from
`optimize` up to `runtime` shares, so it lives below all of them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class Runner:
    """`run(batch)` maps a float32 `[B,3,S,S]` batch (torch tensor if `uses_torch`, else numpy) to logits; None for a
    frame artifact, which takes raw frames only (`run_frames`).

    Optional, for the frame path (`Predictor.predict`): `run_grid(batch)` gives seg logits on the head's grid
    `[B,C,g,g]`, before its upsample (the frame path upsamples them to the frame in one step); `run_frames(frames)`
    takes a list of uint8 frames of one size and returns the uint8 masks `[B,H,W]` (seg) or float32 probabilities
    `[B,C]` (cls) itself, the whole frame path on the device or inside the graph of a frame artifact, whose
    accepted frame geometry is `frame_shape` (`(H, W)` or `(H, W, 3)`; None: any size).

    Optional, for the bench's host/device split (artifact runtimes on a GPU, trtexec's "Host Latency" vs "GPU
    Compute"): `run_split(batch)` is `run` with its phases timed, returning `(output, (h2d_ms, compute_ms, d2h_ms))`
    for that one call: the host-to-device copy, the compute and the device-to-host copy, on the clock `split_timer`
    names ("cuda_events": events on the runner's own stream around each phase; "perf_counter_ns": the host clock
    around each phase, each ending in a synchronization). `run` itself records nothing.

    `run_device_frames(frames)`, only where the whole frame path runs on a CUDA device (the optimized backend on CUDA):
    uint8 frames `[B,H,W]` or `[B,H,W,3]` already there, as a torch tensor on the runner's device, → the masks
    `[B,H,W]` (seg) or probabilities `[B,C]` (cls) as a torch tensor on that device; no host copy either way (frames
    from an upstream GPU operator)."""

    run: Callable | None
    uses_torch: bool
    device: str
    precision: str
    max_batch: int | None = None
    input_dtype: str = "float32"
    run_grid: Callable | None = None
    run_frames: Callable | None = None
    frame_shape: tuple | None = None
    run_split: Callable | None = None
    split_timer: str | None = None
    run_device_frames: Callable | None = None
