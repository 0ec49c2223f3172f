"""A small run of both CUDA C++ kernels for compute-sanitizer (memcheck, racecheck): every dtype, both filter kinds,
odd and 32x32 grids, gray and RGB frames. Inputs are made on CPU and copied, so the only kernels the sanitizer sees
are ours; each output is checked against the reference. Exit status 0 only when every output matches.

    compute-sanitizer --tool memcheck python -m benchmarks.cuda_driver
"""

from __future__ import annotations

import sys

import torch

from engine.bench.inputs import pil_weights
from engine.bench.measure import relative_error
from htkernels import cuda_ops
from htkernels.preprocess import preprocess_ref
from htkernels.testing import PARAM_NAMES, RELATIVE, random_frames, reference_spatial, spatial_inputs


def run() -> list:
    failures = []
    for batch, h, w, channels in [(2, 7, 5, 16), (1, 32, 32, 64), (2, 14, 14, 64)]:
        for spectral in (False, True):
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                z, filt, params = spatial_inputs(batch, h, w, channels, spectral, dtype, "cpu", seed=h + w)
                cuda_params = [params[name].cuda() for name in PARAM_NAMES]
                out = torch.full_like(z, float("nan")).cuda()
                cuda_ops.adapter_spatial_into(out, z.cuda(), h, w, None if filt is None else filt.cuda(), *cuda_params)
                error = relative_error(out.cpu(), reference_spatial(z, h, w, filt, params))
                if not error <= RELATIVE[dtype]:
                    failures.append(f"adapter_spatial b{batch} {h}x{w} r{channels} spectral={spectral} {dtype}: "
                                    f"{error}")
    for batch, height, width, size, rgb in [(2, 37, 29, 16, True), (1, 64, 80, 24, False), (2, 16, 16, 16, False)]:
        for dtype in (torch.float32, torch.float16):
            frames = random_frames(batch, height, width, rgb, seed=height)
            rows, cols = pil_weights(height, size), pil_weights(width, size)
            out = torch.full((batch, 3, size, size), float("nan"), dtype=dtype).cuda()
            cuda_ops.preprocess_into(out, frames.cuda(), rows.cuda(), cols.cuda(), 1 / 255)
            if not torch.equal(out.cpu(), preprocess_ref(frames, rows, cols, 1 / 255, dtype)):
                failures.append(f"preprocess b{batch} {height}x{width} -> {size} rgb={rgb} {dtype}")
    torch.cuda.synchronize()
    return failures


if __name__ == "__main__":
    problems = run()
    for problem in problems:
        print("MISMATCH", problem)
    print(f"cuda_driver: {'ok' if not problems else f'{len(problems)} mismatches'}")
    sys.exit(1 if problems else 0)
