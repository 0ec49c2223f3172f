"""Section `kernels`: each kernel next to its baselines, with its error to the fp64 reference.

Providers: `eager_ref` (the `<op>_ref`), `compile_ref` (`torch.compile` of it), `torch_provider` (the optimized
model's plain-torch ops), `triton` (`torch.ops.htkernels.*`) and `cuda` (the CUDA C++ provider, when built). On a
GPU the providers of GRAPH_PROVIDERS are also timed inside a CUDA graph (`graph_us`: no launch overhead).
"""

from __future__ import annotations

import time

import torch

import htkernels.adapter_in as ain
import htkernels.adapter_out as aout
import htkernels.adapter_spatial as asp
import htkernels.linear_act as act
import htkernels.preprocess as pre
from engine.bench.inputs import preprocess_inputs
from engine.bench.measure import relative_error
from engine.optimize.kernels import TorchAdapterKernels
from htkernels.testing import adapter_inputs

from .common import DTYPES, Check, cuda_provider, error_text, graph_time

GRAPH_PROVIDERS = ("eager_ref", "torch_provider", "triton", "cuda")
REFERENCES = {"adapter_in": ain.adapter_in_ref, "adapter_out": aout.adapter_out_ref,
              "adapter_spatial": asp.adapter_spatial_ref, "linear_act": act.linear_act_ref,
              "preprocess": pre.preprocess_ref}


def cases(batches) -> list:
    """(op, batch, spectral filter) of every row, in table order."""
    rows = []
    for batch in batches:
        rows += [(op, batch, False) for op in ("adapter_in", "adapter_spatial", "adapter_out")]
        rows.append(("adapter_spatial", batch, True))
        rows.append(("linear_act", batch, False))
    return rows


def _float64(inputs: tuple) -> list:
    return [t.double() if torch.is_tensor(t) and t.is_floating_point() else t for t in inputs]


def run(check: Check) -> None:
    args, device, timer = check.args, check.device, check.timer
    deadline = check.deadline(0.85)
    cuda_impl, cuda_reason = cuda_provider(device)
    check.results["cuda_provider"] = "available" if cuda_impl is not None else f"unavailable: {cuda_reason}"
    width, channels, grid = check.shape
    frame_shape = (37, 45, 24) if args.tiny else (480, 640, 224)
    rows = check.results.setdefault("kernels", [])
    compiled_refs = {}  # one torch.compile per op: a second batch size recompiles once with a dynamic batch
    for op, batch, spectral in cases(args.kernel_batches) + [("preprocess", 2 if args.tiny else 8, False)]:
        label = op + ("[spectral]" if spectral else "")
        dtype = DTYPES[args.dtype]
        if op == "preprocess":
            inputs = preprocess_inputs(batch, *frame_shape, device)
            shape = f"B={batch} {frame_shape[0]}x{frame_shape[1]}->{frame_shape[2]}"
        else:
            inputs = adapter_inputs(op, batch, dtype, device, width, channels, grid, spectral)
            shape = f"B={batch} D={width} r={channels} grid={grid}"
        ref = REFERENCES[op]
        providers = {"eager_ref": lambda ref=ref, inputs=inputs: ref(*inputs),
                     "triton": lambda op=op, inputs=inputs: getattr(torch.ops.htkernels, op)(*inputs)}
        if op not in ("preprocess", "linear_act"):
            providers["torch_provider"] = lambda op=op, inputs=inputs: getattr(TorchAdapterKernels, op)(*inputs)
        if cuda_impl is not None and op != "linear_act" and hasattr(cuda_impl, op):
            providers["cuda"] = lambda op=op, inputs=inputs: getattr(cuda_impl, op)(*inputs)
        if not args.no_compile and time.monotonic() < deadline:
            compiled = compiled_refs.setdefault(op, torch.compile(ref))
            providers["compile_ref"] = lambda compiled=compiled, inputs=inputs: compiled(*inputs)
        row = {"op": label, "shape": shape, "dtype": str(dtype).replace("torch.", "") if op != "preprocess" else "u8"}
        expected = None
        with torch.inference_mode():
            for name, fn in providers.items():
                try:
                    out = fn()
                    if expected is None:
                        # The fp64 reference; preprocess has none (its math is integer arithmetic): the eager one's output.
                        expected = ref(*_float64(inputs)) if op != "preprocess" else out
                    row[name] = timer(fn) | {"rel_err": relative_error(out, expected)}
                except Exception as exc:  # noqa: BLE001
                    row[name] = {"error": error_text(exc)}
                    continue
                if device.type == "cuda" and name in GRAPH_PROVIDERS:
                    # Device time per call without the launch overhead (what a CUDA-graph forward pays).
                    try:
                        row[name]["graph_us"] = graph_time(timer, fn, repeat=20)["median_us"]
                    except Exception as exc:  # noqa: BLE001
                        row[name]["graph_error"] = error_text(exc)
        rows.append(row)
        check.save()
