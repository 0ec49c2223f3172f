"""Section `frames`: frame to mask on the device (engine.optimize.frames) next to the tensor forward at the same batch.

At 480×640 and 1080×1920 gray frames, batch 1 and 8, in the run's dtype, the optimized backend's runner:
`frames_graph` is the device time of the frame path's CUDA graph alone (preprocess → forward → postprocess),
`forward_graph` that of the tensor forward's graph (`forward(x)`, float32 `[B,3,224,224]` already on the device; for
seg it ends at the grid logits, the 224² upsample runs after the replay); `frames_call` is the whole `run_frames` call
(host staging, H2D, graph, D2H, sync) and `forward_call` the whole `run` call on device-resident images (copy into
the graph, replay, upsample or clone). All times from the one timer
(`htkernels.timing.cuda_event_ms`, through `Timer`). `mask_agreement_vs_host` is the share of mask pixels equal to
the host frame path (Pillow preprocessing, grid logits, engine.postprocess). Target (480×640, batch 1):
`frames_graph` within 60 µs of `forward_graph`. `--device cpu --tiny` runs the eager pipeline at toy sizes.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.backends import optimized
from engine.optimize.frames import FramePipeline
from engine.optimize.model import OptimizedHTModel
from engine.postprocess import results_from_logits
from engine.preprocess import preprocess_frames
from engine.weights import random_package_tensors

from .common import DTYPES, Check, error_text
from .e2e import model_config

SIZES = ((480, 640), (1080, 1920))
TINY_SIZES = ((48, 64), (30, 50))
BATCHES = (1, 8)
TINY_BATCHES = (1, 2)


def _frames(batch: int, height: int, width: int) -> list:
    rng = np.random.default_rng(height * width + batch)
    return [rng.integers(0, 256, (height, width), dtype=np.uint8) for _ in range(batch)]


def _agreement(cfg, run_grid, device: torch.device, frames: list, masks: np.ndarray) -> float:
    batch = preprocess_frames(frames, cfg.preprocessing)
    grid = run_grid(torch.from_numpy(batch).to(device)).float().cpu().numpy()
    host = results_from_logits("seg", grid, [f.shape for f in frames], cfg.classes, image_size=cfg.image_size)
    return float(np.mean([np.mean(r.mask == m) for r, m in zip(host, masks)]))


def run(check: Check) -> None:
    args, device, timer = check.args, check.device, check.timer
    cfg = model_config(args.tiny)
    tensors = random_package_tensors(cfg, seed=0, calibrate=False)
    section = check.results.setdefault("frames", {"arch": cfg.arch, "task": cfg.task, "dtype": args.dtype,
                                                  "rows": []})
    if device.type == "cuda":
        class Package:  # what `optimized.load` reads from a loaded package
            config = cfg

        Package.tensors = tensors
        runner = optimized.load(Package, str(device), args.dtype)
        pipeline, forward, run_grid, graphs = runner.run_frames, runner.run, runner.run_grid, runner.run
    else:
        model = OptimizedHTModel(cfg, tensors, dtype=DTYPES[args.dtype]).eval()
        pipeline, graphs = FramePipeline(model, "cpu"), None

        def forward(images):
            with torch.inference_mode():
                return model(images)

        def run_grid(images):
            with torch.inference_mode():
                return model(images, grid=True)
    for height, width in TINY_SIZES if args.tiny else SIZES:
        for batch in TINY_BATCHES if args.tiny else BATCHES:
            row = {"frame": f"{height}x{width}", "batch": batch, "dtype": args.dtype}
            try:
                frames = _frames(batch, height, width)
                images = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device,
                                    generator=torch.Generator(device=device).manual_seed(batch))
                masks = pipeline(frames)
                forward(images)
                row["mask_agreement_vs_host"] = _agreement(cfg, run_grid, device, frames, masks)
                row["frames_call"] = timer(lambda: pipeline(frames))
                row["forward_call"] = timer(lambda: forward(images))
                if graphs is not None:
                    row["frames_graph"] = timer(graphs.graphs[("frames", (batch, height, width))][0].replay)
                    row["forward_graph"] = timer(graphs.graphs[graphs.forward_key(images.shape)][0].replay)
                    row["frames_minus_forward_graph_us"] = (row["frames_graph"]["median_us"]
                                                            - row["forward_graph"]["median_us"])
            except Exception as exc:  # noqa: BLE001  (the other shapes are still measured)
                row["error"] = error_text(exc)
            section["rows"].append(row)
            check.save()
