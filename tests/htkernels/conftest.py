"""Kernel tests run the real Triton kernels: compiled on a CUDA GPU, interpreted (TRITON_INTERPRET=1) on CPU.

Triton chooses interpreter or compiler when a kernel is decorated, so the variable is set here, before any
test module of this folder imports htkernels.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def launch_defaults(monkeypatch):
    """The launchers' defaults, not the launch tuner's choice (which would time every candidate at every test
    shape on a GPU); test_tune.py runs each candidate and the tuner itself. Only for the tests of this folder."""
    monkeypatch.setenv("HTK_TUNE", "0")


@pytest.fixture
def device() -> str:
    """Where the kernels run: the GPU when there is one, else the CPU through the Triton interpreter."""
    pytest.importorskip("triton", reason="Triton is not installed (pip install -c constraints.txt '.[triton]')")
    if torch.cuda.is_available():
        return "cuda"
    from htkernels._triton import interpreting
    from htkernels.adapter_in import _adapter_in_kernel

    assert interpreting() and type(_adapter_in_kernel).__name__ == "InterpretedFunction", (
        "htkernels was imported before TRITON_INTERPRET=1 was set; run with TRITON_INTERPRET=1 in the environment")
    return "cpu"


@pytest.fixture
def poisoned(monkeypatch):
    """Every floating `torch.empty` is NaN-filled, so an output element a kernel fails to write fails the test."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        tensor = real_empty(*args, **kwargs)
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
        return tensor

    monkeypatch.setattr(torch, "empty", empty)
    return empty
