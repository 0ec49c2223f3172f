"""`ht-engine demo`: seeded package → best backend → phantom cine → real-time stream → overlay video + report."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .options import frame_rate, integer

# A reduced ViT (same structure: adapters on every block, three extracted levels, seg head at 224x224) so that
# the demo streams several frames per second on a 2-core CPU. `--full` uses the ViT-B/16 of the design card.
DEMO_MODEL = dict(width=192, layers=6, heads=3, head_dim=128, bottleneck=32, extract_layers=[1, 3, 5],
                  adapter_layers=list(range(6)))


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="stream a synthetic ultrasound cine through a seeded model, in real "
                                   "time, and write an overlay video and a latency report")
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--arch", default="biomedclip-vit-b16")
    parser.add_argument("--full", action="store_true", help="full ViT-B/16 model (about 1 s per frame on 2 cores)")
    parser.add_argument("--frames", type=integer(1, 10_000, "a frame count"), default=90, help="cine length (frames)")
    parser.add_argument("--fps", type=frame_rate, default=30.0, help="cine frame rate, replayed in real time")
    parser.set_defaults(handler=run)


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
    pipeline = StreamPipeline(predictor, policy="latest", max_batch=1,
                              sinks=[OverlayVideoSink(overlay_path), JsonLinesSink(jsonl_path)],
                              on_progress=show,
                              progress_interval_s=1.0)
    try:
        report = pipeline.run(cine_path, realtime=True, context={"artifact": str(package), **predictor.provenance()})
    finally:
        if pipeline.report is not None:
            atomic_write(report_path, lambda tmp: tmp.write_text(json.dumps(pipeline.report, indent=2)))
    print()
    print(format_report(report))
    print(f"5. overlay video (masks over the frames, at the cine's own timing): {overlay_path}")
    print(f"   latency report (JSON): {report_path}")
    print(f"   per-frame results (JSON lines): {jsonl_path}")
    print(f"demo done in {time.perf_counter() - started:.1f} s; outputs in {out}/ "
          f"(random weights: the masks show the pipeline, not a diagnosis)")
    return 0
