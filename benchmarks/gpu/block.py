"""Section `block`: the three adapter kernels of one block at batch 1, eager and inside a CUDA graph (the ≤ 25 µs per
block target).

Providers: `triton` (all three Triton kernels), `cuda` (the CUDA C++ spatial kernel, cuBLAS GEMMs),
`triton_gemms_cuda_spatial` (Triton in/out around the CUDA C++ spatial kernel) and `torch_provider`.
"""

from __future__ import annotations

import torch

from engine.optimize.kernels import TorchAdapterKernels
from engine.optimize.triton_provider import TritonAdapterKernels
from htkernels.testing import adapter_block, adapter_block_inputs

from .common import DTYPES, Check, cuda_provider, error_text, graph_time


def run(check: Check) -> None:
    device, timer = check.device, check.timer
    cuda_impl, _ = cuda_provider(device)
    triton_impl = TritonAdapterKernels()
    providers = {"triton": (triton_impl, triton_impl), "torch_provider": (TorchAdapterKernels, TorchAdapterKernels)}
    if cuda_impl is not None:
        providers["cuda"] = (cuda_impl, cuda_impl)
        providers["triton_gemms_cuda_spatial"] = (triton_impl, cuda_impl)
    block = check.results.setdefault("adapter_block_batch1", {})
    for dtype_name in ("bf16", "fp32"):
        inputs = adapter_block_inputs(DTYPES[dtype_name], device, *check.shape)
        for name, (gemms, spatial_kernels) in providers.items():
            adapter = adapter_block(inputs, gemms.adapter_in, spatial_kernels.adapter_spatial, gemms.adapter_out)
            for mode in ("eager", "graph"):
                key = f"{name}_{dtype_name}_{mode}"
                try:
                    with torch.inference_mode():
                        block[key] = timer(adapter) if mode == "eager" else graph_time(timer, adapter, repeat=20)
                except Exception as exc:  # noqa: BLE001
                    block[key] = {"error": error_text(exc)}
            check.save()
