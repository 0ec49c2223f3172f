"""`optimized`: the reference model after exact rewrites (engine.optimize), fastest path per device.

CPU: fp32, bf16 (GEMM weights and activations in bf16, adapter spatial math in fp32) or int8 (the blocks' GEMMs
dynamically quantized: int8 weights per output channel, activations per token at run time; engine.optimize.quant),
compiled block by block with `torch.compile`, the compiled code cached on disk (engine.optimize.cpu).
CUDA: the adapter ops from the Triton provider (the CUDA C++ kernels for spectral filters, see
`default_cuda_kernels`; `kernels=` chooses), run through CUDA graphs (engine.optimize.cuda_runner), with the frame
path on the device (engine.optimize.frames: uint8 frames in, masks or probabilities out, one graph per frame shape).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..devices import cuda_status, torch_device
from ..errors import BackendError, PackageError
from ..runner import Runner

if TYPE_CHECKING:
    from ..optimize.kernels import AdapterKernels

CPU_PRECISIONS = ("fp32", "bf16", "int8")
CUDA_PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}


def available(device: str) -> tuple[bool, str]:
    return cuda_status(device)


def build_model(package, precision: str, kernels: str | AdapterKernels = "torch"):
    """The optimized model of `package` in `precision`; `kernels` a provider name (`KERNEL_PROVIDERS`) or
    instance."""
    from ..optimize.kernels import kernel_provider
    from ..optimize.model import OptimizedHTModel

    provider = kernel_provider(kernels) if isinstance(kernels, str) else kernels
    try:
        return OptimizedHTModel(package.config, package.tensors, kernels=provider, dtype=DTYPES[precision]).eval()
    except (RuntimeError, ValueError) as exc:
        raise PackageError(f"package tensors do not fit the model of its config: {exc}") from exc


def load(package, device: str, precision: str, kernels: str | None = None) -> Runner:
    """`kernels`: the adapter-kernel provider (engine.optimize.kernels.KERNEL_PROVIDERS); default Triton on CUDA
    when it is installed, else the torch ops. On CPU only "torch" (or None) is taken, which runs the torch provider's
    math in the forms of `CpuAdapterKernels` (engine/optimize/cpu_kernels.py)."""
    target = torch_device(device)
    if target.type == "cuda":
        return _load_cuda(package, target, precision, kernels)
    if kernels not in (None, "torch"):
        raise BackendError(f"backend 'optimized' on CPU runs the torch adapter ops (in their CPU forms); "
                           f"kernels={kernels!r} needs a CUDA device")
    if precision not in CPU_PRECISIONS:
        raise BackendError(f"backend 'optimized' runs on CPU in {CPU_PRECISIONS}, got precision {precision!r}")
    from ..optimize.cpu import make_cpu_runner
    from ..optimize.cpu_kernels import CpuAdapterKernels

    return make_cpu_runner(build_model(package, precision, CpuAdapterKernels()), package, precision)


def _provider_status(name: str, device: str) -> tuple[bool, str]:
    """`(usable, why not)` of the adapter-kernel provider `name` on `device`."""
    from ..optimize.kernels import get_kernels

    try:
        return get_kernels(name).available(device)
    except BackendError as exc:  # unknown, not installed (Triton) or not built (htkernels._C)
        return False, str(exc)


def default_cuda_kernels(config, device: str) -> str:
    """The adapter kernels `optimized` uses on CUDA unless told: Triton; for spectral filters the CUDA C++ kernels
    when built (their spatial op does the filter as DFT products on chip: 29 µs per call at batch 1 on an H100 vs
    162 µs for the Triton circular convolution, benchmarks/results/gpu-h100-2026-11-27); torch ops without either."""
    usable = {name: _provider_status(name, device)[0] for name in ("triton", "cuda")}
    if config.filter_kind == "spectral" and usable["cuda"]:
        return "cuda"
    if usable["triton"]:
        return "triton"
    return "cuda" if usable["cuda"] else "torch"


def _load_cuda(package, target: torch.device, precision: str, kernels: str | None) -> Runner:
    if precision not in CUDA_PRECISIONS:
        raise BackendError(f"backend 'optimized' runs on CUDA in {CUDA_PRECISIONS}, got precision {precision!r}")
    if kernels is None:
        kernels = default_cuda_kernels(package.config, str(target))
    else:
        usable, reason = _provider_status(kernels, str(target))
        if not usable:
            raise BackendError(f"kernels={kernels!r} cannot run on {target}: {reason}")
    model = build_model(package, precision, kernels=kernels).to(target)
    from ..optimize.cuda_runner import make_cuda_runner

    return make_cuda_runner(model, str(target), precision, max_batch=None, frames=True)
