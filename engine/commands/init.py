"""`ht-engine init`: a package with seeded random weights (tests, demos, benchmarks)."""

from __future__ import annotations

from pathlib import Path

from ..config import ARCHS
from .options import class_count, seed


def register(subparsers) -> None:
    parser = subparsers.add_parser("init", help="write a package with seeded random weights")
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS), help="backbone family: %(choices)s")
    parser.add_argument("--task", required=True, choices=("seg", "cls"),
                        help="%(choices)s: segmentation or classification head")
    parser.add_argument("--num-classes", type=class_count, default=2,
                        help="classes of the head (default: %(default)s)")
    parser.add_argument("--filter", dest="filter_kind", choices=("channel", "spectral"), default="channel",
                        help="the adapters' frequency filter, one of %(choices)s: per-channel (the authors') or "
                             "spectral (default: %(default)s)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the random weights (default: %(default)s)")
    parser.add_argument("--out", required=True, type=Path, help="output .htpkg (a new file)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from ..config import ModelConfig
    from ..fileio import check_output_file
    from ..package import save_package
    from ..weights import random_package_tensors

    check_output_file(args.out, "--out")
    config = ModelConfig.for_arch(args.arch, args.task, args.num_classes, filter_kind=args.filter_kind)
    sha = save_package(args.out, config, random_package_tensors(config, args.seed))
    print(f"wrote {args.out} ({args.arch}, {args.task}, {args.filter_kind} filter, seed {args.seed}, "
          f"sha256 {sha[:16]}…)")
    return 0
