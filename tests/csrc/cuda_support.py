"""What the csrc tests need to know about this machine: is the extension expected, built, and is there a GPU."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import pytest
import torch


def nvcc_present() -> bool:
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    return shutil.which("nvcc") is not None or any(home and (Path(home) / "bin" / "nvcc").is_file() for home in homes)


def build_skipped() -> bool:
    return os.environ.get("HTK_SKIP_CUDA_BUILD", "") not in ("", "0")


def extension():
    """`htkernels._C`, or None where it was not built."""
    try:
        return importlib.import_module("htkernels._C")
    except ImportError:
        return None


def skip_without_extension():
    """A skipif mark for tests that call the extension: it must exist wherever nvcc does (test_build checks that)."""
    return pytest.mark.skipif(extension() is None, reason="htkernels._C is not built (no nvcc or HTK_SKIP_CUDA_BUILD)")


def gpu_marks():
    """Marks of a GPU runtime test: `requires_cuda`, skipped with the reason where it cannot run."""
    if extension() is None:
        reason = "htkernels._C is not built (no nvcc or HTK_SKIP_CUDA_BUILD)"
    elif not torch.cuda.is_available():
        reason = "no CUDA GPU on this machine"
    else:
        reason = ""
    return [pytest.mark.requires_cuda, pytest.mark.skipif(bool(reason), reason=reason or "runs")]
