"""AOTInductor packages (`.pt2`): the deployable graph compiled ahead of time for CPU or CUDA, loaded without
recompiling. The package is compiled for the device it is built on (`--device`)."""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import BackendError
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


def foreign_tensors(program, device_type: str) -> list:
    """Names of the tensors of an exported program (graph values, weights, constants) that are not on
    `device_type`: for a GPU package, the CPU tensors that make it a mixed-device AOTInductor model. Such packages
    compile, and upstream reports them crashing the process when loaded or run (pytorch/pytorch#172739: constants in
    host memory; pytorch/pytorch#190000: a mixed CPU/CUDA graph), so `build_aoti` refuses one instead."""
    import torch
    from torch.utils import _pytree

    found = [f"{node.op} {node.name} ({node.target})" for node in program.graph.nodes
             if any(isinstance(value, torch.Tensor) and value.device.type != device_type
                    for value in _pytree.tree_leaves(node.meta.get("val")))]
    tensors = {**program.state_dict, **program.constants}
    found += [f"constant {name}" for name, tensor in tensors.items()
              if isinstance(tensor, torch.Tensor) and tensor.device.type != device_type]
    return found


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
        foreign = foreign_tensors(program, target.type)
        if foreign:
            raise BackendError(f"the exported graph for {target.type} holds {len(foreign)} tensors on another device "
                               f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}): AOTInductor would make "
                               "a mixed-device package of it, the kind upstream reports crashing when loaded "
                               "(pytorch/pytorch#172739, #190000)")
    with stage(progress, f"compiling with AOTInductor for {target.type} (minutes on a small CPU)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(program, package_path=str(directory / MODEL_FILE))
    return MODEL_FILE, {"aoti": {"device_type": target.type}}
