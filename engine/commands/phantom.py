"""`ht-engine phantom`: a synthetic B-mode cine loop (MP4/MKV video or multi-frame DICOM) with ground-truth masks."""

from __future__ import annotations

from pathlib import Path

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
    needed, available = WORK_BYTES_PER_PIXEL * args.frames * args.height * args.width, available_memory()
    if available is not None and needed > available:
        raise InputError(f"--frames {args.frames} of {args.height}x{args.width} need about {needed / 2**30:.1f} GiB "
                         f"of memory, {available / 2**30:.1f} GiB are available; expected fewer or smaller frames")
    cine = phantom_cine(args.frames, args.height, args.width, fps=args.fps, seed=args.seed, lesions=args.lesions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".dcm":
        write_dicom(args.out, cine.frames, fps=args.fps)
    else:
        write_video(args.out, cine.frames, fps=args.fps)
    print(f"wrote {args.out}: {args.frames} frames {args.height}x{args.width} at {args.fps:g} fps "
          f"(seed {args.seed}, {args.lesions} lesions)")
    if args.masks is not None:
        np.save(args.masks, cine.masks.astype(np.uint8))
        print(f"ground-truth masks: {args.masks}")
    return 0
