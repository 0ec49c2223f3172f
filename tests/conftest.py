"""Suite-wide setup. Triton decides between compiling and interpreting when a kernel is decorated, so on a machine
without a GPU the interpreter is selected here, before any test module imports htkernels."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
