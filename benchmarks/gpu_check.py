"""GPU check: per-kernel and end-to-end benchmarks side by side with their baselines, plus the bf16 GEMM rate.

Run by `benchmarks/gpu_check.sh` (which also runs the GPU tests), as a script:

    python benchmarks/gpu_check.py [--sections gemm,block,tune,e2e,kernel_count,kernels,frames,split] [--out F.json]
    python benchmarks/gpu_check.py --device cpu --tiny    # the same code on CPU at toy sizes (checks the script)
    python benchmarks/gpu_check.py --dry-run              # imports every section: can each run here?

Every section (one module of `benchmarks/gpu/`, imported when it runs) is guarded: a failure, an import error
included, is recorded in the JSON and the next section runs. The JSON is rewritten after each section, so a run cut
short by the time budget keeps what it measured. `--device cpu --tiny` measures nothing useful; on CPU the htkernels
ops dispatch to their references. The providers side by side are described in each section's module.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

# Run as a script, this file's folder is the first entry of sys.path: the section package imports as `gpu`.
from gpu.common import DTYPES, Check, Timer, environment
from gpu.table import table

ROOT = Path(__file__).resolve().parents[1]
# Section name -> module of benchmarks/gpu/ (each exposes `run(check)`), in the default order.
SECTIONS = {"gemm": "gpu.gemm", "block": "gpu.block", "tune": "gpu.tune", "e2e": "gpu.e2e",
            "kernel_count": "gpu.kernel_count", "kernels": "gpu.kernels", "frames": "gpu.frames", "split": "gpu.split"}


def record_tuner(results: dict) -> None:
    """The launch tuner's choices so far (the optimized backend tunes in its warm-up runs), when the tuner loads."""
    try:
        tune = importlib.import_module(SECTIONS["tune"])
    except Exception:  # noqa: BLE001  (the tune section records the import error itself)
        return
    tune.record(results)


def dry_run(names: list) -> int:
    """Import each section's module (which imports everything the section calls) and report; touches no GPU."""
    failed = 0
    for name in names:
        try:
            module = importlib.import_module(SECTIONS[name])
            if not callable(getattr(module, "run", None)):
                raise TypeError(f"{SECTIONS[name]} has no run(check)")
        except Exception as exc:  # noqa: BLE001  (report every section, not the first failure)
            failed += 1
            print(f"gpu_check: section {name}: cannot be imported: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        print(f"gpu_check: section {name}: ok ({SECTIONS[name]})")
    table({})  # the table of an empty run must not fail either
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks the script, measures nothing useful")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--kernel-batches", default="1,64")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="seconds this script may take: no new torch.compile past 75%% (end to end) and 85%% "
                             "(kernels) of it")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_check.json or benchmarks/results)")
    parser.add_argument("--table", default=None, help="only print the table of an existing JSON")
    parser.add_argument("--dry-run", action="store_true",
                        help="only check that every section of --sections imports here (no GPU needed)")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    names = [name for name in args.sections.split(",") if name]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; expected some of {', '.join(SECTIONS)}")
    if args.dry_run:
        return dry_run(names)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.kernel_batches = [int(b) for b in args.kernel_batches.split(",") if b]
    started = time.monotonic()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible; use --device cpu --tiny to check the script", file=sys.stderr)
        return 2
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
    out_path = Path(args.out) if args.out else out_dir / "gpu_check.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(device), "args": {k: v for k, v in vars(args).items()}, "errors": {}}

    def save():
        out_path.write_text(json.dumps(results, indent=1, default=str))

    check = Check(args, device, Timer(device, args.warmup, args.reps), results, save, started)
    for name in names:
        begin = time.monotonic()
        try:
            importlib.import_module(SECTIONS[name]).run(check)
        except Exception:  # noqa: BLE001  (one broken section must not lose the others)
            results["errors"][name] = traceback.format_exc()
            print(f"gpu_check: section {name} failed:\n{results['errors'][name]}", file=sys.stderr)
        results.setdefault("section_seconds", {})[name] = time.monotonic() - begin
        record_tuner(results)
        save()
    print(table(results))
    print(f"\nJSON: {out_path}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
