"""The exceptions htkernels raises on purpose.

htkernels imports nothing from the engine, so it has its own types; the engine maps them to its typed errors where
it calls into the kernels (`engine.optimize.kernels.kernel_errors`). Each is also a builtin type (`ValueError`,
`RuntimeError`) so callers that know nothing of either library still catch them the usual way.
"""

from __future__ import annotations


class KernelError(Exception):
    """Base class of every error htkernels raises on purpose."""


class KernelInputError(KernelError, ValueError):
    """An argument of an op is wrong: device, dtype, shape, rank, or a launch configuration (`tuning=`) key."""


class KernelUnavailableError(KernelError, RuntimeError):
    """An op cannot run here: Triton is not installed, the CUDA extension `htkernels._C` is not built, or the CUDA
    launch itself failed (no GPU, a failed kernel)."""
