"""The tolerances of the test suite: relative error = max|a-b| / max|b| per comparison.

The table of bounds per dtype (`RELATIVE`) and the error itself are the package's (`htkernels.testing.RELATIVE`,
`engine.bench.measure.relative_error`), so a test's bound and a benchmark's check are the same numbers.
"""

import torch

from engine.bench.measure import relative_error
from htkernels.testing import RELATIVE

__all__ = ["EXACT_REWRITE", "RELATIVE", "assert_relative", "relative_error"]

# Equalities that hold exactly in exact arithmetic and differ only by FFT/float rounding.
EXACT_REWRITE = 1e-6


def assert_relative(actual, expected, tol: float, what: str = "") -> None:
    shapes = tuple(actual.shape), tuple(expected.shape)
    assert shapes[0] == shapes[1], f"{what}: shape {shapes[0]} != {shapes[1]}"
    assert torch.isfinite(torch.as_tensor(actual)).all(), f"{what}: non-finite values"
    err = relative_error(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"
