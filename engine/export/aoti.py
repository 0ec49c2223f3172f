"""AOTInductor packages (`.pt2`): the deployable graph compiled ahead of time for CPU or CUDA, loaded without
recompiling. The package is compiled for the device it is built on (`--device`)."""

from __future__ import annotations

import warnings
from pathlib import Path

from .manifest import FRAME_INPUT_NAME, INPUT_NAME, BatchRange, FrameSpec

# Reduced precision only where the kernels for it are fast (tensor cores); on CPU fp32 is the only sensible choice.
AOTI_PRECISIONS = {"cpu": ("fp32",), "cuda": ("fp32", "fp16", "bf16")}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
MODEL_FILE = "model.pt2"


def export_program(model, config, batch: BatchRange, device, frame: FrameSpec | None = None):
    import torch

    examples = max(2, min(batch.opt, 4)) if batch.max > batch.min else batch.min
    if frame is None:
        size = config.image_size
        example = torch.rand(examples, 3, size, size, generator=torch.Generator().manual_seed(0))
        input_name = INPUT_NAME
    else:
        from .frame_graph import example_frames

        example, input_name = example_frames(frame, examples), FRAME_INPUT_NAME
    dynamic_shapes = None
    if batch.max > batch.min:
        dynamic_shapes = {input_name: {0: torch.export.Dim("batch", min=batch.min, max=batch.max)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(model.to(device), (example.to(device),), dynamic_shapes=dynamic_shapes)


def build_aoti(package, precision: str, batch: BatchRange, directory: Path, progress, stage, device: str = "cpu",
               frame: FrameSpec | None = None):
    import torch

    from ..devices import torch_device
    from .graph import deployable_model

    target = torch_device(device)
    dtype = getattr(torch, DTYPES[precision])
    if frame is None:
        model = deployable_model(package.config, package.tensors, dtype)
    else:
        from .frame_graph import frame_model

        model = frame_model(package, frame, dtype)
    with stage(progress, "exporting the graph (torch.export)"):
        with torch.no_grad():
            program = export_program(model, package.config, batch, target, frame)
    with stage(progress, f"compiling with AOTInductor for {target.type} (minutes on a small CPU)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(program, package_path=str(directory / MODEL_FILE))
    return MODEL_FILE, {"aoti": {"device_type": target.type}}
