"""`ht-engine predict`: masks (PNG), overlays or class probabilities for every frame of image files, folders, videos
and DICOM files (the inputs `stream` takes), plus a JSON summary, and DICOM Segmentation objects on request."""

from __future__ import annotations

import json
from pathlib import Path

from .options import batch_size


def add_load_options(parser) -> None:
    from ..backends import BACKEND_MODULES

    parser.add_argument("--backend", default=None, choices=(*BACKEND_MODULES, "auto"),
                        help="backend to run on, one of %(choices)s (default: reference for a package, the "
                             "artifact's own for an artifact; auto: the fastest usable one, measured once per "
                             "machine)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    parser.add_argument("--precision", default="fp32",
                        help="fp32, bf16, fp16 or int8 where the backend offers it (auto: with --backend auto, the fastest "
                             "precision too); an artifact runs at the precision "
                             "it was built for (default: %(default)s)")


def add_dicom_seg_type_option(parser) -> None:
    from ..dicom_seg import SEGMENTATION_TYPES

    parser.add_argument("--dicom-seg-type", choices=SEGMENTATION_TYPES, default=None,
                        help="with --dicom-seg: binary (one bit per pixel and foreground class: the masks) or "
                             "fractional (each foreground class's per-pixel probability, in 1/255 steps) "
                             "(default: binary)")


def dicom_seg_type(args, requested: bool) -> str:
    """The segmentation type `--dicom-seg-type` asks for (binary by default); refused without `--dicom-seg`."""
    from ..errors import InputError

    if args.dicom_seg_type is not None and not requested:
        raise InputError(f"--dicom-seg-type {args.dicom_seg_type} applies to a DICOM Segmentation: add --dicom-seg")
    return args.dicom_seg_type or "binary"


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="run a package/artifact on images, videos and DICOM files")
    parser.add_argument("artifact", type=Path, help=".htpkg package or built artifact directory")
    parser.add_argument("inputs", nargs="+", type=Path,
                        help="image files (PNG, JPEG, BMP, TIFF: 8-bit gray/RGB), folders of them, video files or "
                             "DICOM files (single- or multi-frame): every frame gets a result")
    parser.add_argument("--out", type=Path, default=Path("predictions"),
                        help="output directory for masks, overlays and predictions.json (default: %(default)s)")
    parser.add_argument("--batch-size", type=batch_size, default=8,
                        help="frames of a video or DICOM file per inference batch (default: %(default)s)")
    parser.add_argument("--dicom-seg", action="store_true",
                        help="also write OUT/<stem>_seg.dcm, a DICOM Segmentation of each DICOM input "
                             "(segmentation models; needs the [dicom] extra)")
    add_dicom_seg_type_option(parser)
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


def expand_inputs(paths: list[Path]) -> list[Path]:
    """The files to predict: each file as given, each folder as its image files in natural order."""
    from ..stream.sources import FolderSource

    expanded = []
    for path in paths:
        expanded.extend(FolderSource(path).paths if path.is_dir() else [path])
    return expanded


def input_frames(path: Path):
    """`(frame number in the file, pixels)` of every frame of one input file, and whether the file is multi-frame:
    an image file is one frame; a video or DICOM file is read through the stream sources (`open_source`)."""
    from ..images import read_image
    from ..stream import DicomSource, open_source
    from ..stream.sources import IMAGE_SUFFIXES

    if path.suffix.lower() in IMAGE_SUFFIXES:
        return iter([(0, read_image(path))]), False
    source = open_source(path)
    multi = not isinstance(source, DicomSource) or len(source) > 1
    return ((frame.index, frame.pixels) for frame in source), multi


def batches(frames, size: int):
    batch = []
    for item in frames:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run(args) -> int:
    from ..errors import InputError
    from ..fileio import atomic_write, check_output_directory
    from ..images import draw_overlay, write_mask_png, write_png
    from ..runtime import Predictor

    check_output_directory(args.out, "--out")
    seg_type = dicom_seg_type(args, args.dicom_seg)
    inputs = expand_inputs(args.inputs)
    if args.dicom_seg:
        from ..dicom_seg import check_dicom_source, fractional_planes

        for path in inputs:
            check_dicom_source(path, "--dicom-seg")
    predictor = Predictor.load(args.artifact, backend=args.backend, device=args.device, precision=args.precision)
    if args.dicom_seg and predictor.task != "seg":
        raise InputError(f"--dicom-seg needs a segmentation model; {args.artifact} is a {predictor.task!r} model "
                         f"(its class probabilities are in predictions.json)")
    if args.dicom_seg and seg_type == "fractional":
        predictor = predictor.with_probability_maps()
    # Every input is opened (images decoded, DICOM headers read, files checked) before the first frame is inferred.
    opened = [input_frames(path) for path in inputs]
    entries, overlays = [], 0
    for path, stem, (frames, multi) in zip(inputs, output_stems(inputs), opened):
        masks = []
        for batch in batches(frames, args.batch_size):
            results = predictor.predict([pixels for _, pixels in batch], batch_size=args.batch_size)
            for (number, pixels), result in zip(batch, results):
                name = f"{stem}_frame{number:05d}" if multi else stem
                entry = {**result.summary(), "index": len(entries), "input": str(path), "frame": number}
                if result.mask is not None:
                    mask_path, overlay_path = args.out / f"{name}_mask.png", args.out / f"{name}_overlay.png"
                    write_mask_png(mask_path, result.mask)
                    write_png(overlay_path, draw_overlay(pixels, result, legend=True))
                    overlays += 1
                    entry.update(mask=str(mask_path), overlay=str(overlay_path))
                    if args.dicom_seg:
                        masks.append(result.mask if seg_type == "binary" else
                                     fractional_planes(result.probability_maps, predictor.num_classes))
                entries.append(entry)
                where = f"{path}" + (f" frame {number}" if multi else "")
                print(f"{where}: " + (f"mask {entry['mask']}" if result.mask is not None else
                                      f"{entry['label']} ({max(entry['probabilities'].values()):.3f})"), flush=True)
        if args.dicom_seg:
            from ..dicom_seg import write_dicom_seg

            seg_path = args.out / f"{stem}_seg.dcm"
            write_dicom_seg(seg_path, path, masks, predictor.classes, predictor.provenance(),
                            segmentation_type=seg_type)
            print(f"DICOM Segmentation ({seg_type}): {seg_path}", flush=True)
    summary = {"artifact": str(args.artifact), **predictor.provenance(), "task": predictor.task,
               "classes": predictor.classes, "results": entries}
    summary_path = args.out / "predictions.json"
    atomic_write(summary_path, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    if overlays:
        print(f"overlays: {overlays} in {args.out} (*_overlay.png)")
    print(f"summary: {summary_path}")
    return 0
