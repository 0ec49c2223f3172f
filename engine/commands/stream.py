"""`ht-engine stream`: run a package/artifact over a video, DICOM cine, image folder; overlay video + latency report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .options import add_capture_options, batch_size, capture_source, frame_rate, milliseconds
from .predict import add_dicom_seg_type_option, add_load_options, dicom_seg_type


def register(subparsers) -> None:
    parser = subparsers.add_parser("stream", help="stream a video / DICOM cine / image folder through a model")
    parser.add_argument("artifact", type=Path, help=".htpkg package or built artifact directory")
    parser.add_argument("source", help="video file (mp4, avi, mkv…), multi-frame DICOM, a folder of images, or with "
                                       "--input-format a capture device or stream (/dev/video0)")
    add_capture_options(parser)
    parser.add_argument("--policy", choices=("latest", "all"), default="latest",
                        help="%(choices)s; latest: real time, drop stale frames; all: every frame, in order "
                             "(default: %(default)s)")
    parser.add_argument("--max-batch", type=batch_size, default=1, help="largest micro-batch (default: %(default)s)")
    parser.add_argument("--budget-ms", type=milliseconds, default=None,
                        help="latest policy: drop frames older than this when a batch forms (default: no budget)")
    parser.add_argument("--realtime", action=argparse_bool(), default=None,
                        help="replay the file at its own frame rate, as a scanner would (default: on for latest, "
                             "off for all)")
    parser.add_argument("--fps", type=frame_rate, default=None,
                        help="frame rate of image folders and DICOM files without timing tags (default 30)")
    parser.add_argument("--region", choices=("full", "scan"), default="full",
                        help="full: the whole frame; scan: DICOM frames cropped to the 2D tissue region of their "
                             "Sequence of Ultrasound Regions, masks pasted back at full size (background outside; "
                             "default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="overlay video (.mp4 or .mkv; default: none)")
    parser.add_argument("--report", type=Path, default=None, help="metrics report (JSON; default: none)")
    parser.add_argument("--jsonl", type=Path, default=None,
                        help="one JSON line per processed frame (default: none)")
    parser.add_argument("--masks", type=Path, default=None,
                        help="folder for PNG masks (segmentation models; default: none)")
    parser.add_argument("--dicom-seg", type=Path, default=None, metavar="OUT.dcm",
                        help="DICOM Segmentation of the processed frames of a DICOM source (segmentation models; "
                             "needs the [dicom] extra; default: none)")
    add_dicom_seg_type_option(parser)
    parser.add_argument("--quiet", action="store_true", help="no live progress line")
    add_load_options(parser)
    parser.set_defaults(handler=run)


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction


def format_progress(snapshot: dict) -> str:
    return (f"frames in {snapshot['frames_in']:6d}  processed {snapshot['processed']:6d}  "
            f"dropped {snapshot['dropped']:6d}  {snapshot['fps']:6.1f} fps  "
            f"latency p50 {snapshot['latency_p50_ms']:7.1f} ms  p99 {snapshot['latency_p99_ms']:7.1f} ms")


def progress_printer():
    live = sys.stderr.isatty()

    def show(snapshot: dict) -> None:
        print(("\r" if live else "") + format_progress(snapshot), end="" if live else "\n", file=sys.stderr,
              flush=True)

    return show, live


def format_report(report: dict) -> str:
    e2e = report["latency_ms"]["end_to_end"]
    lines = [f"{report['processed']} of {report['frames_in']} frames processed, {report['dropped']} dropped "
             f"({report['policy']} policy, max batch {report['max_batch']}), {report['throughput_fps']:.1f} fps "
             f"over {report['wall_s']:.1f} s"]
    if e2e.get("count"):
        lines.append(f"end-to-end latency ms: p50 {e2e['p50']:.1f}  p95 {e2e['p95']:.1f}  p99 {e2e['p99']:.1f}  "
                     f"max {e2e['max']:.1f}")
        fused = report["fused_into_infer"]
        stages = "  ".join(f"{stage} {report['latency_ms'][stage]['p50']:.1f}" + (" (fused into infer)"
                                                                                 if stage in fused else "")
                           for stage in ("queue", "preprocess", "infer", "postprocess", "sink"))
        lines.append(f"stage latency p50 ms ({report['frame_path']} frame path): {stages}")
    return "\n".join(lines)


def warm_up(predictor, max_batch: int = 1) -> None:
    """One call per batch size of the frame path the stream runs (prepare, infer, results) before the clock starts:
    first calls allocate, compile or autotune. Mid-gray frames of the runner's frame geometry where it has one (a
    frame artifact), else of the model's input size."""
    import numpy as np

    shape = predictor.runner.frame_shape or (predictor.image_size, predictor.image_size)
    frame = np.full(shape, 128, dtype=np.uint8)
    for batch in sorted({1, max_batch}):
        predictor.predict([frame] * batch, batch_size=batch)


def run(args) -> int:
    from ..errors import InputError, OutputError
    from ..fileio import atomic_write, check_output_directory, check_output_file
    from ..runtime import Predictor
    from ..stream import (
        DicomSegSink,
        JsonLinesSink,
        OverlayVideoSink,
        PngMaskSink,
        RegionPasteSink,
        StreamPipeline,
        open_source,
    )

    # Every output is checked before the model loads: an unwritable --report must not surface after the stream.
    if args.out is not None and args.out.suffix.lower() not in (".mp4", ".mkv"):
        raise OutputError(f"--out {args.out}: overlay videos are .mp4 (H.264) or .mkv (FFV1)")
    for option, path in (("--out", args.out), ("--report", args.report), ("--jsonl", args.jsonl)):
        if path is not None:
            check_output_file(path, option)
    if args.masks is not None:
        check_output_directory(args.masks, "--masks")
    seg_type = dicom_seg_type(args, args.dicom_seg is not None)
    if args.dicom_seg is not None:
        from ..dicom_seg import check_dicom_source, check_seg_output

        check_seg_output(args.dicom_seg, "--dicom-seg")
        check_dicom_source(args.source, "--dicom-seg")
    realtime = args.policy == "latest" if args.realtime is None else args.realtime
    # A scan region is read from the file before the model loads: a file without one fails first.
    if args.region == "scan":
        source = open_source(args.source, fps=args.fps, realtime=realtime, region="scan",
                             input_format=args.input_format)
    else:
        source = capture_source(args) or args.source
    predictor = Predictor.load(args.artifact, backend=args.backend, device=args.device, precision=args.precision)
    if args.dicom_seg is not None and predictor.task != "seg":
        raise InputError(f"--dicom-seg needs a segmentation model; {args.artifact} is a {predictor.task!r} model")
    if args.dicom_seg is not None and seg_type == "fractional":
        predictor = predictor.with_probability_maps()
    sinks = []
    if args.out is not None:
        sinks.append(OverlayVideoSink(args.out))
    if args.jsonl is not None:
        sinks.append(JsonLinesSink(args.jsonl))
    if args.masks is not None:
        sinks.append(PngMaskSink(args.masks))
    if args.dicom_seg is not None:
        sinks.append(DicomSegSink(args.dicom_seg, predictor.provenance(), segmentation_type=seg_type))
    if args.region == "scan":
        sinks = [RegionPasteSink(sink, source.region) for sink in sinks]
    warm_up(predictor, args.max_batch)
    show, live = progress_printer()
    pipeline = StreamPipeline(predictor, policy=args.policy, max_batch=args.max_batch, budget_ms=args.budget_ms,
                              sinks=sinks, on_progress=None if args.quiet else show,
                              progress_interval_s=0.5 if live else 5.0)
    context = {"artifact": str(args.artifact), **predictor.provenance(),
               "region": source.region_info if args.region == "scan" else {"region": "full"}}
    try:
        pipeline.run(source, fps=args.fps, realtime=realtime, context=context)
    finally:
        if live and not args.quiet:
            print(file=sys.stderr)
        if pipeline.report is not None:
            if args.report is not None:
                atomic_write(args.report, lambda tmp: tmp.write_text(json.dumps(pipeline.report, indent=2)))
            print(format_report(pipeline.report))
            outputs = [(label, path) for label, path in (("overlay video", args.out), ("report", args.report),
                                                          ("per-frame JSON lines", args.jsonl),
                                                          ("masks", args.masks),
                                                          ("DICOM Segmentation", args.dicom_seg)) if path is not None]
            for label, path in outputs:
                print(f"{label}: {path}")
    return 0
