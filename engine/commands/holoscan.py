"""`ht-engine holoscan`: the model inside a Holoscan SDK application (source → model → recorder), with data-flow
tracking; prints and writes its latency report."""

from __future__ import annotations

import json
from pathlib import Path

from .options import add_capture_options, capture_source
from .predict import add_load_options


def register(subparsers) -> None:
    parser = subparsers.add_parser("holoscan", help="run a package/artifact as a Holoscan SDK application")
    parser.add_argument("artifact", type=Path, help=".htpkg package or built artifact directory")
    parser.add_argument("source", help="video file, DICOM file, folder of images, or with --input-format a capture "
                                       "device or stream (/dev/video0)")
    add_capture_options(parser)
    parser.add_argument("--config", type=Path, default=None,
                        help="Holoscan YAML config (see examples/holoscan/ht_ultrasound.yaml; default: none)")
    parser.add_argument("--report", type=Path, default=None,
                        help="report JSON: frames, end-to-end latency p50/p95/p99/max, per-operator times "
                             "(default: none)")
    parser.add_argument("--out", type=Path, default=None, help="overlay video (.mp4 or .mkv; default: none)")
    parser.add_argument("--masks", type=Path, default=None,
                        help="folder for PNG masks (segmentation models; default: none)")
    add_load_options(parser)
    parser.set_defaults(handler=run)


def format_report(report: dict) -> str:
    e2e = report["latency_ms"]["end_to_end"]
    lines = [f"{report['processed']} of {report['frames_in']} frames processed by the Holoscan application"]
    if e2e.get("count"):
        lines.append(f"end-to-end latency ms (data-flow tracker): p50 {e2e['p50']:.1f}  p95 {e2e['p95']:.1f}  "
                     f"p99 {e2e['p99']:.1f}  max {e2e['max']:.1f}")
        lines.append("operator time p50 ms: " + "  ".join(
            f"{name} {summary['p50']:.1f}" for name, summary in report["latency_ms"]["operators"].items()))
    return "\n".join(lines)


def run(args) -> int:
    from ..errors import BackendError, OutputError
    from ..fileio import atomic_write, check_output_directory, check_output_file
    from ..runtime import Predictor
    from ..stream import OverlayVideoSink, PngMaskSink

    if args.out is not None and args.out.suffix.lower() not in (".mp4", ".mkv"):
        raise OutputError(f"--out {args.out}: overlay videos are .mp4 (H.264) or .mkv (FFV1)")
    for option, path in (("--out", args.out), ("--report", args.report)):
        if path is not None:
            check_output_file(path, option)
    if args.masks is not None:
        check_output_directory(args.masks, "--masks")
    source = capture_source(args) or args.source
    try:
        from ..holoscan import run_app
    except ImportError as exc:
        raise BackendError(f"ht-engine holoscan needs the Holoscan SDK: pip install 'ht-engine[holoscan]' "
                           f"(holoscan-cu13); importing it failed: {exc}") from exc
    predictor = Predictor.load(args.artifact, backend=args.backend, device=args.device, precision=args.precision)
    sinks = [sink(path) for sink, path in ((OverlayVideoSink, args.out), (PngMaskSink, args.masks))
             if path is not None]
    report = {"artifact": str(args.artifact), **run_app(predictor, source, config=args.config, sinks=sinks)}
    if args.report is not None:
        atomic_write(args.report, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    print(format_report(report))
    for label, path in (("overlay video", args.out), ("masks", args.masks), ("report", args.report)):
        if path is not None:
            print(f"{label}: {path}")
    return 0
