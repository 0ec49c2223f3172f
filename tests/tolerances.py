"""The one tolerance table of the test suite: relative error = max|a-b| / max|b| per comparison."""

import torch

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


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual = torch.as_tensor(actual).double()
    expected = torch.as_tensor(expected).double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def assert_relative(actual, expected, tol: float, what: str = "") -> None:
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(torch.as_tensor(actual)).all(), f"{what}: non-finite values"
    err = relative_error(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"
