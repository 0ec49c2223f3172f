"""`ht-engine demo`: seeded package → synthetic ultrasound frame → prediction, showing where everything went."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="init a seeded model and run it on a synthetic ultrasound frame")
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--arch", default="biomedclip-vit-b16")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from ..images import write_png
    from ..synthetic import synthetic_frame
    from . import init, predict

    args.out.mkdir(parents=True, exist_ok=True)
    package = args.out / "model.htpkg"
    init.run(argparse.Namespace(arch=args.arch, task="seg", num_classes=2, filter_kind="channel", seed=0,
                                out=package))
    frame, _ = synthetic_frame(480, 640, seed=1)
    frame_path = args.out / "frame.png"
    write_png(frame_path, frame)
    print(f"wrote synthetic ultrasound frame {frame_path} (480x640)")
    start = time.perf_counter()
    predict.run(argparse.Namespace(artifact=package, inputs=[frame_path], out=args.out, backend="reference",
                                   device="cpu", precision="fp32"))
    print(f"demo done in {time.perf_counter() - start:.1f} s (reference backend, CPU); outputs in {args.out}/")
    return 0
