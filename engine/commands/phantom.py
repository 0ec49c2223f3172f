"""`ht-engine phantom`: a synthetic B-mode cine loop (MP4/MKV video or multi-frame DICOM) with ground-truth masks."""

from __future__ import annotations

from pathlib import Path

from ..phantom import DICOM_PHOTOMETRICS, DICOM_SYNTAX_PHOTOMETRICS
from .options import frame_rate, integer, seed

# Frames are synthesized in float32 with a few full-size temporaries: about this many bytes per pixel at the peak.
WORK_BYTES_PER_PIXEL = 24


def register(subparsers) -> None:
    parser = subparsers.add_parser("phantom", help="write a synthetic ultrasound cine loop (.mp4, .mkv, .dcm)")
    parser.add_argument("--frames", type=integer(1, 100_000, "a frame count"), default=60,
                        help="cine length in frames (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="cine.mp4 / cine.mkv (lossless) / cine.dcm")
    parser.add_argument("--height", type=integer(16, 4096, "a height (pixels)"), default=480,
                        help="frame height in pixels (default: %(default)s)")
    parser.add_argument("--width", type=integer(16, 4096, "a width (pixels)"), default=640,
                        help="frame width in pixels (default: %(default)s)")
    parser.add_argument("--fps", type=frame_rate, default=30.0, help="frame rate (default: %(default)s)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of speckle and lesions (default: %(default)s)")
    parser.add_argument("--lesions", type=integer(0, 64, "a lesion count"), default=2,
                        help="moving lesions in the cine (default: %(default)s)")
    parser.add_argument("--masks", type=Path, default=None,
                        help="also write the ground-truth lesion masks (uint8 0/1) as a .npy array [T,H,W] "
                             "(default: none)")
    parser.add_argument("--transfer-syntax", choices=tuple(DICOM_SYNTAX_PHOTOMETRICS), default="explicit-little",
                        help=".dcm: how the pixel data is stored: %(choices)s (jpeg-baseline is lossy; the others "
                             "lossless; default: %(default)s)")
    parser.add_argument("--photometric", choices=DICOM_PHOTOMETRICS, default="MONOCHROME2",
                        help=".dcm: photometric interpretation: %(choices)s (not every pair with --transfer-syntax "
                             "is valid DICOM; invalid ones are refused; default: %(default)s)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import numpy as np

    from ..errors import InputError
    from ..fileio import check_output_file
    from ..phantom import phantom_cine, write_dicom, write_video
    from .options import available_memory

    suffix = args.out.suffix.lower()
    if suffix not in (".mp4", ".mkv", ".avi", ".dcm"):
        raise InputError(f"{args.out}: unsupported output {suffix!r}; use .mp4, .mkv, .avi or .dcm")
    check_output_file(args.out, "--out")
    if args.masks is not None:
        check_output_file(args.masks, "--masks")
    dicom_options = args.transfer_syntax != "explicit-little" or args.photometric != "MONOCHROME2"
    if suffix != ".dcm" and dicom_options:
        raise InputError(f"--transfer-syntax and --photometric apply to .dcm output, not {suffix}")
    if args.photometric not in DICOM_SYNTAX_PHOTOMETRICS[args.transfer_syntax]:
        raise InputError(f"--photometric {args.photometric} cannot be stored as --transfer-syntax "
                         f"{args.transfer_syntax}; it stores {', '.join(DICOM_SYNTAX_PHOTOMETRICS[args.transfer_syntax])}")
    if args.photometric == "YBR_FULL_422" and args.width % 2:
        raise InputError(f"--photometric YBR_FULL_422 needs an even --width, got {args.width}")
    needed, available = WORK_BYTES_PER_PIXEL * args.frames * args.height * args.width, available_memory()
    if available is not None and needed > available:
        raise InputError(f"--frames {args.frames} of {args.height}x{args.width} need about {needed / 2**30:.1f} GiB "
                         f"of memory, {available / 2**30:.1f} GiB are available; expected fewer or smaller frames")
    cine = phantom_cine(args.frames, args.height, args.width, fps=args.fps, seed=args.seed, lesions=args.lesions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".dcm":
        rows, columns = np.nonzero(cine.sector)
        write_dicom(args.out, cine.frames, fps=args.fps, photometric=args.photometric,
                    transfer_syntax=args.transfer_syntax,
                    scan_region=(int(columns.min()), int(rows.min()), int(columns.max()), int(rows.max())))
    else:
        write_video(args.out, cine.frames, fps=args.fps)
    print(f"wrote {args.out}: {args.frames} frames {args.height}x{args.width} at {args.fps:g} fps "
          f"(seed {args.seed}, {args.lesions} lesions)")
    if args.masks is not None:
        np.save(args.masks, cine.masks.astype(np.uint8))
        print(f"ground-truth masks: {args.masks}")
    return 0
