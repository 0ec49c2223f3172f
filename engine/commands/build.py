"""`ht-engine build`: a package → a deployable artifact directory (model file + manifest.json)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..export.build import BUILD_PRECISIONS
from ..export.manifest import ARTIFACT_BACKENDS


def register(subparsers) -> None:
    parser = subparsers.add_parser("build", help="build an ONNX / TensorRT / AOTInductor artifact from a package")
    parser.add_argument("package", type=Path, help=".htpkg package")
    parser.add_argument("--backend", required=True, choices=ARTIFACT_BACKENDS,
                        help="artifact kind: %(choices)s")
    parser.add_argument("--precision", default="fp32", choices=BUILD_PRECISIONS,
                        help="one of %(choices)s, where the backend offers it (default: %(default)s)")
    parser.add_argument("--batch", default="1,4,16", help="MIN,OPT,MAX batch sizes the artifact accepts "
                        "(OPT: the one TensorRT tunes for; default: %(default)s)")
    parser.add_argument("--frame-size", default=None, metavar="HxW",
                        help="build a frame artifact: uint8 frames of this size in (e.g. 1080x1920), the mask (seg) or "
                        "the probabilities (cls) out, pre- and postprocessing inside the graph (default: a tensor "
                        "artifact)")
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3),
                        help="with --frame-size: 1 for gray [B,H,W] frames, 3 for RGB [B,H,W,3] (default: %(default)s)")
    parser.add_argument("--device", default=None, help="aoti: cpu or cuda[:N] (default: cpu); tensorrt: the GPU")
    parser.add_argument("--out", required=True, type=Path, help="output directory (replaced only on success)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from ..artifacts import open_artifact
    from ..errors import InputError
    from ..export.build import build_artifact
    from ..export.manifest import BatchRange, FrameSpec

    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    batch = BatchRange.parse(args.batch)
    if args.frame_size is None and args.channels != 1:
        raise InputError("--channels applies to frame artifacts only: give --frame-size HxW too")
    frame = None if args.frame_size is None else FrameSpec.parse(args.frame_size, args.channels)
    device = args.device or ("cuda" if args.backend == "tensorrt" else "cpu")
    built = build_artifact(args.package, args.backend, args.precision, batch, args.out, progress=progress,
                           device=device, frame=frame)
    artifact = open_artifact(built)
    manifest = artifact.manifest
    frames = "" if frame is None else f"frames {'x'.join(map(str, frame.shape))} uint8, "
    print(f"built {artifact.directory}: {manifest['backend']} {manifest['precision']}, "
          f"batch {batch.min},{batch.opt},{batch.max}, {frames}{manifest['artifact']} "
          f"({artifact.model_file.stat().st_size / 2**20:.1f} MiB)")
    return 0
