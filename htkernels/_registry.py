"""The one way an op module registers its public op with `torch.library`, so `torch.compile` and `torch.export`
see one opaque op and its output shape without running it."""

from __future__ import annotations

from typing import Callable

import torch


def register_op(name: str, *, cuda: Callable, fake: Callable) -> Callable:
    """Decorator registering `htkernels::<name>`: the decorated function declares the schema (its annotations) and
    is the CPU implementation (the op's reference), `cuda` runs it on CUDA tensors (the Triton launcher, called with
    the op's arguments), and `fake` gives the output's shape and dtype to tracing on meta or fake tensors."""

    def register(cpu: Callable):
        op = torch.library.custom_op(f"htkernels::{name}", mutates_args=(), device_types="cpu")(cpu)
        op.register_kernel("cuda")(cuda)
        op.register_fake(fake)
        return op

    return register
