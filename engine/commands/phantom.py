"""`ht-engine phantom`: a synthetic B-mode cine loop (MP4/MKV video or multi-frame DICOM) with ground-truth masks."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("phantom", help="write a synthetic ultrasound cine loop (.mp4, .mkv, .dcm)")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--out", type=Path, required=True, help="cine.mp4 / cine.mkv (lossless) / cine.dcm")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lesions", type=int, default=2)
    parser.add_argument("--masks", type=Path, default=None,
                        help="also write the ground-truth lesion masks (uint8 0/1) as a .npy array [T,H,W]")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import numpy as np

    from ..errors import InputError
    from ..phantom import phantom_cine, write_dicom, write_video

    suffix = args.out.suffix.lower()
    if suffix not in (".mp4", ".mkv", ".avi", ".dcm"):
        raise InputError(f"{args.out}: unsupported output {suffix!r}; use .mp4, .mkv, .avi or .dcm")
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
