"""The one tolerance table of the test suite: relative error = max|a-b| / max|b| per comparison.

The error itself is the package's (`engine.bench.measure.relative_error`), so a test's bound and a benchmark's
error column measure the same thing.
"""

import torch

from engine.bench.measure import relative_error

# Fast paths and independent formulations against the reference at each precision.
RELATIVE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.bfloat16: 3e-2,
    torch.float16: 5e-3,
    # int8 Q/DQ graphs: per-channel symmetric weights, per-tensor activations calibrated by min/max.
    torch.int8: 1e-1,
}
# Equalities that hold exactly in exact arithmetic and differ only by FFT/float rounding.
EXACT_REWRITE = 1e-6


def assert_relative(actual, expected, tol: float, what: str = "") -> None:
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(torch.as_tensor(actual)).all(), f"{what}: non-finite values"
    err = relative_error(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"
