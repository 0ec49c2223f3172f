"""`ht-engine demo`: seeded package → best backend → phantom cine → real-time stream → overlay video + report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..config import ARCHS
from .options import frame_rate, integer

# A reduced ViT (same structure: adapters on every block, three extracted levels, seg head at 224x224) so that
# the demo streams several frames per second on a 2-core CPU. `--full` uses the ViT-B/16 of the design card.
DEMO_MODEL = dict(width=192, layers=6, heads=3, head_dim=128, bottleneck=32, extract_layers=[1, 3, 5],
                  adapter_layers=list(range(6)))


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="stream a synthetic ultrasound cine through a seeded model, in real "
                                   "time, and write an overlay video and a latency report")
    parser.add_argument("--out", type=Path, default=Path("demo_out"),
                        help="output directory: package, cine, overlay video, reports (default: %(default)s)")
    parser.add_argument("--arch", default="biomedclip-vit-b16", choices=sorted(ARCHS),
                        help="backbone family of the seeded model, one of %(choices)s (default: %(default)s)")
    parser.add_argument("--full", action="store_true", help="full ViT-B/16 model (about 1 s per frame on 2 cores)")
    parser.add_argument("--frames", type=integer(1, 10_000, "a frame count"), default=90,
                        help="cine length in frames (default: %(default)s)")
    parser.add_argument("--fps", type=frame_rate, default=30.0,
                        help="cine frame rate, replayed in real time (default: %(default)s)")
    parser.set_defaults(handler=run)


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (nothing to find, nothing found)."""
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((predicted & truth).sum()) / total


def ground_truth_decorator(truth_masks: np.ndarray, scores: list):
    """The demo overlay's extras: the phantom's ground-truth contour (white) next to the prediction, per-frame Dice
    and latency burned in, and a caption that the model has random weights. Each frame's Dice goes to `scores`."""
    from ..images import burn_text, mask_edges

    def decorate(item, rgb: np.ndarray) -> np.ndarray:
        truth = truth_masks[item.frame.index] > 0
        score = dice(item.result.mask > 0, truth)
        scores.append(score)
        rgb[mask_edges(truth.astype(np.uint8))] = 255
        return burn_text(rgb, [f"frame {item.frame.index}   Dice {score:.2f}   latency {1e3 * item.latency_s:.0f} ms",
                               "white: phantom ground truth   colour: model",
                               "demo model: random weights - shows the pipeline, not a diagnosis"])

    return decorate


def run(args) -> int:
    from ..config import ModelConfig
    from ..fileio import atomic_write, check_output_directory
    from ..package import save_package
    from ..phantom import phantom_cine, write_video
    from ..runtime import Predictor
    from ..stream import JsonLinesSink, OverlayVideoSink, StreamPipeline
    from ..weights import random_package_tensors
    from .stream import format_report, progress_printer, warm_up

    started = time.perf_counter()
    out = check_output_directory(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)

    package = out / "model.htpkg"
    config = ModelConfig.for_arch(args.arch, "seg", 2, **({} if args.full else DEMO_MODEL))
    sha = save_package(package, config, random_package_tensors(config, seed=0))
    size = "ViT-B/16" if args.full else f"reduced ViT (width {config.width}, {config.layers} blocks)"
    print(f"1. wrote a seeded {args.arch} segmentation package, {size}: {package} (sha256 {sha[:12]}…)")

    predictor = Predictor.load(package, backend="auto", device="cpu")
    warm_up(predictor)
    picked = predictor.auto_choice
    how = "measured the candidates now" if picked["measured_now"] else "the choice cached for this machine"
    print(f"2. loaded it on the fastest CPU backend, {picked['backend']!r} at {picked['precision']} ({how}: "
          f"{picked['table_ms']} ms), and warmed it up")

    cine = phantom_cine(args.frames, 480, 640, fps=args.fps, seed=1)
    cine_path = out / "phantom.mp4"
    write_video(cine_path, cine.frames, fps=args.fps)
    print(f"3. wrote a synthetic B-mode cine ({args.frames} frames, 480x640, {args.fps:g} fps; moving lesions, "
          f"speckle, shadowing, reverberation): {cine_path}")

    overlay_path, report_path, jsonl_path = out / "overlay.mp4", out / "stream_report.json", out / "frames.jsonl"
    print(f"4. streaming it in real time ({args.fps:g} fps, as a scanner would) with the 'latest' policy: "
          f"the newest frame is always the next one inferred, stale frames are dropped")
    show, _ = progress_printer()
    scores: list = []
    overlay = OverlayVideoSink(overlay_path, decorate=ground_truth_decorator(cine.masks, scores))
    pipeline = StreamPipeline(predictor, policy="latest", max_batch=1, sinks=[overlay, JsonLinesSink(jsonl_path)],
                              on_progress=show,
                              progress_interval_s=1.0)
    try:
        report = pipeline.run(cine_path, realtime=True, context={"artifact": str(package), **predictor.provenance()})
    finally:
        if pipeline.report is not None:
            atomic_write(report_path, lambda tmp: tmp.write_text(json.dumps(pipeline.report, indent=2)))
    print()
    print(format_report(report))
    print(f"5. overlay video (masks over the frames, the phantom's ground-truth contour in white, per-frame Dice and "
          f"latency burned in, at the cine's own timing): {overlay_path}")
    if scores:
        print(f"   mean Dice against the phantom's ground truth: {np.mean(scores):.3f} over {len(scores)} frames "
              f"(random weights: expect no agreement)")
    print(f"   latency report (JSON): {report_path}")
    print(f"   per-frame results (JSON lines): {jsonl_path}")
    print(f"demo done in {time.perf_counter() - started:.1f} s; outputs in {out}/ "
          f"(random weights: the masks show the pipeline, not a diagnosis)")
    return 0
