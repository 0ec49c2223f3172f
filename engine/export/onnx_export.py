"""ONNX export of the deployable graph: opset 18 (native LayerNormalization), dynamic batch, fp32 or fp16.

fp16 graphs keep float32 inputs and outputs, and keep LayerNormalization and Softmax (and their inputs and
outputs) in float32: their reductions lose too much in fp16 (variance of 768 values, exp-sums of attention rows).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from ..errors import BackendError
from .manifest import FRAME_INPUT_NAME, FRAME_OUTPUTS, INPUT_NAME, OUTPUT_NAME, BatchRange, FrameSpec

OPSET = 18
ONNX_PRECISIONS = ("fp32", "fp16")
# What an ONNX artifact can be: the exported graph in fp32/fp16, or the fp32 graph quantized to int8 Q/DQ (quantize).
ARTIFACT_PRECISIONS = ONNX_PRECISIONS + ("int8",)
FP32_OPS = ("LayerNormalization", "Softmax")


def export_onnx(model, config, path: Path, batch: BatchRange, precision: str = "fp32",
                frame: FrameSpec | None = None) -> Path:
    """Export `model` (float32 in, float32 logits out; for `frame`, a `frame_graph.FrameModel`: uint8 frames in) to
    `path`; returns `path`."""
    import onnx
    import torch

    if precision not in ONNX_PRECISIONS:
        raise BackendError(f"ONNX export supports precisions {ONNX_PRECISIONS}, got {precision!r}")
    # An example batch of 1 would let the exporter specialize the batch dimension to a constant.
    examples = max(2, min(batch.opt, 4)) if batch.max > batch.min else batch.min
    if frame is None:
        size = config.image_size
        example = torch.rand(examples, 3, size, size, generator=torch.Generator().manual_seed(0))
        input_name, output_name = INPUT_NAME, OUTPUT_NAME
    else:
        from .frame_graph import example_frames

        example = example_frames(frame, examples)
        input_name, output_name = FRAME_INPUT_NAME, FRAME_OUTPUTS[config.task][0]
    dynamic_shapes = None
    if batch.max > batch.min:
        dynamic_shapes = {input_name: {0: torch.export.Dim("batch", min=batch.min, max=batch.max)}}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[input_name],
                                    output_names=[output_name], dynamic_shapes=dynamic_shapes, opset_version=OPSET,
                                    optimize=True, verbose=False)
    proto = program.model_proto
    if precision == "fp16":
        proto = to_fp16(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return Path(path)


def to_fp16(proto):
    """fp32 graph → fp16 graph with float32 I/O, LayerNormalization and Softmax in float32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # Drop the exporter's intermediate type annotations: the converter re-infers them, and stale float32 entries
    # would contradict the fp16 tensors it creates.
    del proto.graph.value_info[:]
    converted = convert_float_to_float16(proto, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) +
                                         list(FP32_OPS))
    # The converter appends its input casts at the end of the node list; ONNX requires topological order.
    topological_sort(converted.graph)
    return converted


def topological_sort(graph) -> None:
    """Reorder `graph.node` in place so that every node comes after the producers of its inputs."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            names = sorted({name for node in pending for name in node.input if name not in available})[:5]
            raise ValueError(f"graph has a cycle or undefined inputs: {names}")
        ready_ids = {id(node) for node in ready}
        pending = [node for node in pending if id(node) not in ready_ids]
        for node in ready:
            ordered.append(node)
            available.update(node.output)
    copies = [type(node)() for node in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def graph_ops(proto) -> set:
    """Every op type in the graph, its subgraphs and its local functions (with their domain when not ONNX's)."""
    ops = set()

    def visit(graph):
        for node in graph.node:
            ops.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}")
            for attribute in node.attribute:
                if attribute.g is not None and attribute.g.node:
                    visit(attribute.g)
                for sub in attribute.graphs:
                    visit(sub)

    visit(proto.graph)
    for function in proto.functions:
        for node in function.node:
            ops.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}")
    return ops
