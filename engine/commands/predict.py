"""`ht-engine predict`: masks (PNG) or class probabilities for image files, plus a JSON summary."""

from __future__ import annotations

import json
from pathlib import Path


def add_load_options(parser) -> None:
    from ..backends import BACKEND_MODULES

    parser.add_argument("--backend", default=None, choices=(*BACKEND_MODULES, "auto"),
                        help="backend to run on (default: reference for a package, the artifact's own for an "
                             "artifact; auto: the fastest usable one, measured once per machine)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    parser.add_argument("--precision", default="fp32",
                        help="fp32, bf16, fp16 or int8 where the backend offers it (auto: with --backend auto, the fastest "
                             "precision too); an artifact runs at the precision "
                             "it was built for (default: %(default)s)")


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="run a package/artifact on image files")
    parser.add_argument("artifact", type=Path, help=".htpkg package or built artifact directory")
    parser.add_argument("inputs", nargs="+", type=Path, help="image files (PNG, JPEG, BMP, TIFF: 8-bit gray/RGB)")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output directory")
    add_load_options(parser)
    parser.set_defaults(handler=run)


def output_stems(paths) -> list:
    """One distinct file stem per input: its own stem, or `<stem>_<n>` (n: its position) where stems collide,
    so `a/scan.png b/scan.png` never write one mask over the other."""
    counts: dict = {}
    for path in paths:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    used = {stem for stem, count in counts.items() if count == 1}
    stems = []
    for position, path in enumerate(paths, start=1):
        stem = path.stem
        if counts[stem] > 1:
            stem, suffix = f"{path.stem}_{position}", position
            while stem in used:
                suffix += len(paths)
                stem = f"{path.stem}_{suffix}"
            used.add(stem)
        stems.append(stem)
    return stems


def run(args) -> int:
    from ..fileio import atomic_write, check_output_directory
    from ..images import overlay, read_image, write_png
    from ..runtime import Predictor

    check_output_directory(args.out, "--out")
    predictor = Predictor.load(args.artifact, backend=args.backend, device=args.device, precision=args.precision)
    frames = [read_image(path) for path in args.inputs]
    entries = []
    for path, stem, frame in zip(args.inputs, output_stems(args.inputs), frames):
        result = predictor.predict([frame])[0]
        entry = {"input": str(path), **result.summary()}
        entry.pop("index")
        if result.mask is not None:
            mask_path = args.out / f"{stem}_mask.png"
            overlay_path = args.out / f"{stem}_overlay.png"
            write_png(mask_path, result.mask)
            gray = frame if frame.ndim == 2 else frame.mean(axis=2).astype("uint8")
            write_png(overlay_path, overlay(gray, result.mask))
            entry.update(mask=str(mask_path), overlay=str(overlay_path))
        entries.append(entry)
        print(f"{path}: " + (f"mask {entry['mask']}" if result.mask is not None else
                             f"{entry['label']} ({max(entry['probabilities'].values()):.3f})"), flush=True)
    summary = {"artifact": str(args.artifact), **predictor.provenance(), "task": predictor.task, "classes": predictor.classes, "results": entries}
    summary_path = args.out / "predictions.json"
    atomic_write(summary_path, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    print(f"summary: {summary_path}")
    return 0
