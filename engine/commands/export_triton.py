"""`ht-engine export-triton`: a built ONNX/TensorRT artifact → a Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path

from .options import integer


def register(subparsers) -> None:
    parser = subparsers.add_parser("export-triton", help="write a built artifact as a Triton Inference Server model")
    parser.add_argument("artifact", type=Path, help="artifact directory from `ht-engine build` (onnx or tensorrt)")
    parser.add_argument("--out", required=True, type=Path, help="Triton model repository (created if missing)")
    parser.add_argument("--name", default=None, help="model name (default: ht_<arch>_<task>_<precision>)")
    parser.add_argument("--instances", type=integer(1, 1024, "an instance count"), default=1,
                        help="model instances per GPU (or CPU) (default: %(default)s)")
    parser.add_argument("--kind", choices=("gpu", "cpu"), default="gpu",
                        help="where instances run: %(choices)s (default: %(default)s)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from ..artifacts import open_artifact
    from ..export.triton_repository import export_triton

    model_dir = export_triton(open_artifact(args.artifact), args.out, args.name, args.instances, args.kind)
    print(f"wrote Triton model {model_dir} (config.pbtxt, 1/, manifest.json); serve with "
          f"`tritonserver --model-repository {args.out}`")
    return 0
