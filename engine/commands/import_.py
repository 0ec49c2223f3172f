"""`ht-engine import`: the authors' checkpoints → a verified `.htpkg` package."""

from __future__ import annotations

from pathlib import Path

from ..config import ARCHS
from .options import class_count


def register(subparsers) -> None:
    parser = subparsers.add_parser("import", help="import the authors' backbone + adapter checkpoints into a package")
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS),
                        help="backbone family of the checkpoints: %(choices)s")
    parser.add_argument("--backbone", required=True, type=Path,
                        help="open_clip/OpenAI CLIP state dict (.pt/.pth/.bin, safetensors, or OpenAI's TorchScript "
                             "ViT-B-16.pt)")
    parser.add_argument("--adapter", required=True, type=Path, help="the authors' best_model.pth")
    parser.add_argument("--task", required=True, choices=("seg", "cls"),
                        help="head in the adapter checkpoint: %(choices)s (segmentation or classification)")
    parser.add_argument("--num-classes", type=class_count, default=None,
                        help="checked against the head (default: read from the head)")
    parser.add_argument("--activation", choices=("gelu", "quick_gelu"), default=None,
                        help="override the arch's MLP activation, one of %(choices)s (e.g. a MetaCLIP backbone "
                             "trained with GELU; default: the arch's own)")
    parser.add_argument("--out", required=True, type=Path, help="output .htpkg")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from ..fileio import check_output_file
    from ..package import save_package
    from ..weights import import_checkpoints

    check_output_file(args.out, "--out")
    print(f"importing {args.arch} {args.task}: backbone {args.backbone}, adapter {args.adapter}", flush=True)
    config, tensors = import_checkpoints(args.arch, args.backbone, args.adapter, args.task, args.num_classes,
                                         activation=args.activation)
    sha = save_package(args.out, config, tensors)
    print(f"wrote {args.out} ({len(tensors)} tensors, {config.num_classes} classes, adapters on layers "
          f"{config.adapter_layers}, sha256 {sha[:16]}…)")
    return 0
