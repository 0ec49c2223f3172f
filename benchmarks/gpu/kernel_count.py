"""Section `kernel_count`: CUDA kernels per forward at batch 1 (target: at most 80), where the launches go.

At batch 1 the forward is latency, not work: each kernel of the CUDA graph costs its launch gap, so the count is the
structure's own measure. Counted with torch.profiler (CUPTI records every kernel of a graph replay):
`optimized_graph` is one replay of the graph the optimized backend (Triton kernels) captured for batch 1 in the
run's dtype; `optimized_call` the whole `run` call around it (copy into the graph's input, replay, then the seg
upsample or the output clone outside the graph); `reference_eager` one eager forward of the reference model.
`graph_nodes` counts the node types of the same forward captured once more with `keep_graph=True`
(`CUDAGraph.get_graph_data`, which needs the `cuda.bindings` package; recorded as an error where it is missing).
Each row lists its most frequent kernel names. On CPU (`--device cpu --tiny`) the section records that it needs a
GPU.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from engine.backends import optimized
from engine.model import build_reference_model
from engine.weights import random_package_tensors

from .common import DTYPES, Check, error_text
from .e2e import model_config

TARGET = 80
TOP = 12  # kernel names listed per row


def profiled_kernels(fn) -> dict:
    """The CUDA kernels, memcpys and memsets of one `fn()` (after one unprofiled call), by torch.profiler."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [event.name for event in prof.events() if event.device_type == DeviceType.CUDA]
    kernels = Counter(name for name in names if not name.startswith(("Memcpy", "Memset")))
    return {"kernels": sum(kernels.values()), "memcpy": sum(name.startswith("Memcpy") for name in names),
            "memset": sum(name.startswith("Memset") for name in names), "top": kernels.most_common(TOP)}


def graph_nodes(fn, static_input: torch.Tensor) -> dict:
    """Node types of `fn(static_input)` captured as a CUDA graph (after two warm-up calls on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(2):
            fn(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.inference_mode(), torch.cuda.graph(graph):
        fn(static_input)
    graph.instantiate()
    return dict(Counter(node["node_type"] for node in graph.get_graph_data()["nodes"]))


def run(check: Check) -> None:
    args, device = check.args, check.device
    section = check.results.setdefault("kernel_count", {"batch": 1, "dtype": args.dtype, "target": TARGET})
    if device.type != "cuda":
        section["skipped"] = "CUDA kernels are counted on a GPU"
        return
    cfg = model_config(args.tiny)
    section.update(arch=cfg.arch, task=cfg.task)
    tensors = random_package_tensors(cfg, seed=0, calibrate=False)
    images = torch.rand(1, 3, cfg.image_size, cfg.image_size, device=device,
                        generator=torch.Generator(device=device).manual_seed(1))

    class Package:  # what `optimized.load` reads from a loaded package
        config = cfg

    Package.tensors = tensors
    runner = optimized.load(Package, str(device), args.dtype).run
    runner(images)  # captures the batch-1 graph
    graph = runner.graphs[runner.forward_key(images.shape)][0]
    reference = build_reference_model(cfg, tensors).to(device=device, dtype=DTYPES[args.dtype]).eval()

    def reference_forward():
        with torch.inference_mode():
            reference(images.to(DTYPES[args.dtype]))

    def captured_forward(batch):
        return runner.model(batch, grid=True) if runner.upsample is not None else runner.model(batch)

    counts = {"optimized_graph": lambda: profiled_kernels(graph.replay),
              "optimized_call": lambda: profiled_kernels(lambda: runner(images)),
              "reference_eager": lambda: profiled_kernels(reference_forward),
              "graph_nodes": lambda: graph_nodes(captured_forward, images.clone())}
    for name, count in counts.items():
        try:
            section[name] = count()
        except Exception as exc:  # noqa: BLE001  (the other counts are still made)
            section[name] = {"error": error_text(exc)}
        check.save()
