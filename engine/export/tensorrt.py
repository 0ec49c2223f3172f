"""TensorRT engines built from the exported ONNX graph.

Two build modes, chosen by the installed TensorRT's major version:
- 10.x, `builder_flags`: the fp32 ONNX graph with precision builder flags (FP16/BF16); LayerNorm and softmax
  layers are pinned to fp32 with OBEY_PRECISION_CONSTRAINTS.
- 11.x and later, `strongly_typed`: precision flags are gone; the precision is the ONNX graph's own types, so an
  fp16 engine is built from the fp16 ONNX graph (which already keeps LayerNorm and softmax in fp32).
int8 is built from the explicitly quantized (Q/DQ) ONNX graph in both modes (10.x also sets the INT8 flag). fp8 is
not offered: Q/DQ calibration of fp8 through ONNX Runtime loses far more accuracy than int8 on these models.

The optimization profile spans `--batch MIN,OPT,MAX`; a timing cache persists per GPU and TensorRT version, so
rebuilds skip kernel timing. Everything here except `build_engine` works without TensorRT (and is tested so).
"""

from __future__ import annotations

from pathlib import Path

from .. import settings
from ..errors import BackendError
from . import tensorrt_device
from .manifest import FRAME_INPUT_NAME, INPUT_NAME, BatchRange, FrameSpec

PLAN_FILE = "model.plan"
ONNX_FILE = "model.onnx"
MIN_MAJOR = 10
MODE_PRECISIONS = {"builder_flags": ("fp32", "fp16", "bf16", "int8"), "strongly_typed": ("fp32", "fp16", "int8")}


def version_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise BackendError(f"cannot read the TensorRT version {version!r}") from None


def build_mode(version: str) -> str:
    """`builder_flags` for TensorRT 10.x, `strongly_typed` for 11.x and later."""
    major = version_major(version)
    if major < MIN_MAJOR:
        raise BackendError(f"TensorRT {version} is too old: this engine builds with TensorRT {MIN_MAJOR}.x or later "
                           f"(name-based tensor API)")
    return "builder_flags" if major == MIN_MAJOR else "strongly_typed"


def check_precision(version: str, precision: str) -> str:
    """The build mode for `precision` on this TensorRT version, or a `BackendError` saying why not."""
    mode = build_mode(version)
    if precision == "fp8":
        raise BackendError("fp8 engines are not offered: fp8 Q/DQ calibration loses far more accuracy than int8 on "
                           "these models; build int8 or fp16 instead")
    if precision not in MODE_PRECISIONS[mode]:
        raise BackendError(f"TensorRT {version} ({mode.replace('_', ' ')}) builds {MODE_PRECISIONS[mode]} from this "
                           f"engine's ONNX graphs, not {precision!r}")
    return mode


def onnx_precision(mode: str, precision: str) -> str:
    """Precision of the ONNX graph the engine is built from: typed graphs for strong typing, fp32 for flags."""
    return precision if mode == "strongly_typed" or precision == "int8" else "fp32"


def profile_shapes(batch: BatchRange, image_size: int, frame: FrameSpec | None = None) -> tuple:
    """`(min, opt, max)` input shapes of the optimization profile (of the uint8 frames of a frame graph)."""
    batch.validate()
    one = (3, image_size, image_size) if frame is None else frame.shape
    return tuple((b, *one) for b in (batch.min, batch.opt, batch.max))


def timing_cache_path(gpu_name: str, compute_capability: str, trt_version: str) -> Path:
    """Where the timing cache of this GPU and TensorRT version lives (`HT_TRT_TIMING_CACHE_DIR` overrides)."""
    root = settings.TRT_TIMING_CACHE_DIR.get() or settings.cache_root() / "tensorrt"
    safe_gpu = "".join(c if c.isalnum() else "-" for c in gpu_name).strip("-")
    return root / f"timing-{safe_gpu}-sm{compute_capability.replace('.', '')}-trt{trt_version}.cache"


def engine_identity(manifest: dict) -> dict:
    return dict(manifest.get("tensorrt", {}))


def check_engine_compatible(built: dict, here: dict) -> None:
    """Refuse an engine built for another GPU, compute capability or TensorRT version, saying which."""
    labels = {"tensorrt_version": "TensorRT version", "gpu_name": "GPU", "compute_capability": "compute capability"}
    mismatches = [f"{label}: built for {built.get(key)!r}, this machine has {here.get(key)!r}"
                  for key, label in labels.items() if built.get(key) != here.get(key)]
    if mismatches:
        raise BackendError("this TensorRT engine cannot run here (" + "; ".join(mismatches) +
                           "); rebuild it on this machine with `ht-engine build --backend tensorrt`")


def build_tensorrt(package, precision: str, batch: BatchRange, directory: Path, progress, stage, device: str = "cuda",
                   frame: FrameSpec | None = None):
    """Export ONNX, check its ops against TensorRT's parser table, build and serialize the engine."""
    from .build import export_onnx_file
    from .trt_ops import check_tensorrt_ops

    usable, reason = tensorrt_device.device_status(device)
    if not usable:
        raise BackendError(f"cannot build a TensorRT engine on {device!r}: {reason}")
    trt = tensorrt_device.import_tensorrt()
    mode = check_precision(trt.__version__, precision)
    index = tensorrt_device.device_index(device)
    tensorrt_device.check_cuda(tensorrt_device.cudart().cudaSetDevice(index))
    identity = tensorrt_device.cuda_device_identity(index)
    identity["tensorrt_version"] = trt.__version__
    graph_precision = onnx_precision(mode, precision)
    proto = export_onnx_file(package, graph_precision, batch, directory / ONNX_FILE, progress, frame)
    check_tensorrt_ops(proto, f"the {graph_precision} ONNX graph")
    del proto
    cache = timing_cache_path(identity["gpu_name"], identity["compute_capability"], trt.__version__)
    with stage(progress, f"building the TensorRT {trt.__version__} engine ({mode.replace('_', ' ')}, {precision})"):
        plan = build_engine(trt, directory / ONNX_FILE, mode, precision,
                            profile_shapes(batch, package.config.image_size, frame), cache, progress,
                            INPUT_NAME if frame is None else FRAME_INPUT_NAME)
    (directory / PLAN_FILE).write_bytes(plan)
    return PLAN_FILE, {"tensorrt": {**identity, "build_mode": mode, "onnx_precision": graph_precision}}


def _progress_monitor(trt, progress):
    class Monitor(trt.IProgressMonitor):
        """Reports TensorRT's top-level build phases (kernel timing can take minutes)."""

        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                progress(f"  TensorRT: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True

        def phase_finish(self, phase_name):
            return None

    return Monitor()


def build_engine(trt, onnx_path: Path, mode: str, precision: str, shapes: tuple, cache_path: Path, progress,
                 input_name: str = INPUT_NAME) -> bytes:
    """Parse `onnx_path` and build a serialized engine (needs TensorRT and a GPU)."""
    from ..fileio import atomic_write

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Requested explicitly on 10.x; 11.x networks are always strongly typed and ignore the flag.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if mode == "strongly_typed" else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT's ONNX parser refused {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # fp32 means fp32: TF32 matmuls (on by default) would round inputs to 10 mantissa bits.
        config.clear_flag(trt.BuilderFlag.TF32)
    if mode == "builder_flags" and precision == "int8":
        # Explicit quantization: the Q/DQ pairs carry the scales; the flag lets TensorRT use int8 kernels for them.
        config.set_flag(trt.BuilderFlag.INT8)
    elif mode == "builder_flags" and precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        kept = (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX)
        for index in range(network.num_layers):
            layer = network.get_layer(index)
            if layer.type in kept:
                layer.precision = trt.float32
                for output in range(layer.num_outputs):
                    layer.set_output_type(output, trt.float32)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *shapes)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    config.progress_monitor = _progress_monitor(trt, progress)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError("TensorRT failed to build the engine (see its log above)")
    serialized = config.get_timing_cache().serialize()
    atomic_write(cache_path, lambda tmp: tmp.write_bytes(bytes(serialized)))
    progress(f"  timing cache saved to {cache_path}")
    return bytes(plan)
