"""`build_artifact`: package → artifact directory (model file + manifest), written atomically."""

from __future__ import annotations

import importlib.metadata
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import BackendError
from ..fileio import check_replaceable_directory, staging_directory
from ..package import LoadedPackage, load_package
from .aoti import AOTI_PRECISIONS
from .manifest import ARTIFACT_BACKENDS, BatchRange, FrameSpec, is_artifact_directory, make_manifest, write_manifest
from .onnx_export import ARTIFACT_PRECISIONS as ONNX_PRECISIONS
from .openvino import OPENVINO_PRECISIONS
from .tensorrt import MODE_PRECISIONS

DEFAULT_BATCH = BatchRange(1, 4, 16)
# Every precision some writer builds (which ones a backend builds on a device: `check_precision`).
BUILD_PRECISIONS = tuple(sorted({*ONNX_PRECISIONS, *AOTI_PRECISIONS["cpu"], *AOTI_PRECISIONS["cuda"],
                                 *OPENVINO_PRECISIONS, *(p for mode in MODE_PRECISIONS.values() for p in mode)}))
# Frame artifacts keep the exact in-graph preprocessing in float32: ONNX and TensorRT build their fp32 graph only
# (their fp16 graphs are converted op by op); AOTInductor's reduced precisions apply to the model inside. OpenVINO
# IR is built from tensor graphs only (its runner has no frame path yet).
FRAME_PRECISIONS = {"onnx": ("fp32",), "tensorrt": ("fp32",), "openvino": ()}
HEARTBEAT_S = 15.0
ARTIFACT_WHAT = "a built artifact (a directory with an ht-engine manifest.json)"


def tool_versions(names) -> dict:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _quiet(message: str) -> None:
    return None


@contextmanager
def stage(progress, text: str):
    """Report `text`, then every HEARTBEAT_S seconds that the stage is still running, then its duration."""
    progress(f"{text} …")
    start = time.perf_counter()
    done = threading.Event()

    def beat():
        while not done.wait(HEARTBEAT_S):
            progress(f"  still {text} ({time.perf_counter() - start:.0f} s)")

    thread = threading.Thread(target=beat, name="build-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    progress(f"  {text}: done in {time.perf_counter() - start:.1f} s")


def build_artifact(package, backend: str, precision: str, batch: BatchRange, out: Path, progress=_quiet,
                   device: str = "cpu", frame: FrameSpec | None = None) -> Path:
    """Build `package` (a path or a `LoadedPackage`) for `backend` into `out` and return `out`; nothing is left at
    `out` on failure. `engine.artifacts.open_artifact(out)` reads it back, verified. With `frame`, a frame artifact:
    uint8 frames of that geometry in, masks or probabilities out (`frame_graph`)."""
    if backend not in ARTIFACT_BACKENDS:
        raise BackendError(f"cannot build backend {backend!r}; artifacts are built for {ARTIFACT_BACKENDS}")
    batch.validate()
    check_precision(backend, precision, device)
    if frame is not None:
        frame.validate()
        allowed = FRAME_PRECISIONS.get(backend)
        if allowed == ():
            raise BackendError(f"{backend} artifacts are built without --frame-size only (tensor in, logits out); "
                               f"build an onnx, tensorrt or aoti frame artifact for raw frames")
        if allowed is not None and precision not in allowed:
            raise BackendError(f"{backend} frame artifacts are built in {allowed}, got {precision!r} (the exact "
                               f"in-graph preprocessing needs float32; build a tensor artifact without --frame-size "
                               f"for {precision!r})")
    check_replaceable_directory(out, is_artifact_directory, ARTIFACT_WHAT)
    if not isinstance(package, LoadedPackage):
        with stage(progress, f"reading package {package}"):
            package = load_package(package)
    config = package.config
    with staging_directory(out, is_artifact_directory, ARTIFACT_WHAT) as directory:
        if backend == "onnx":
            artifact, extra = _build_onnx(package, precision, batch, directory, progress, frame)
        elif backend == "aoti":
            from .aoti import build_aoti

            artifact, extra = build_aoti(package, precision, batch, directory, progress, stage, device, frame)
        elif backend == "openvino":
            from .openvino import build_openvino

            artifact, extra = build_openvino(package, precision, batch, directory, progress, stage, device)
        else:
            from .tensorrt import build_tensorrt

            artifact, extra = build_tensorrt(package, precision, batch, directory, progress, stage, device, frame)
        tools = tool_versions(["ht-engine", "torch", "onnx", "onnxruntime", "onnxscript", "tensorrt", "openvino"])
        manifest = make_manifest(backend=backend, precision=precision, batch=batch, config=config,
                                 package_sha256=package.sha256, artifact=artifact, directory=directory, tools=tools,
                                 extra=extra, frame=frame)
        write_manifest(directory, manifest)
    frames = "" if frame is None else f", frames {'x'.join(map(str, frame.shape))} uint8"
    progress(f"wrote {out} ({backend}, {precision}, batch {batch.min}..{batch.max}{frames})")
    return Path(out)


def check_precision(backend: str, precision: str, device: str) -> None:
    """Refuse a precision the backend cannot build before spending time on the package (TensorRT's depends on the
    installed version and is checked when it is imported)."""
    if backend == "onnx":
        allowed = ONNX_PRECISIONS
    elif backend == "aoti":
        allowed = AOTI_PRECISIONS["cuda" if device.startswith("cuda") else "cpu"]
    elif backend == "openvino":
        allowed = OPENVINO_PRECISIONS
    else:
        return
    if precision not in allowed:
        raise BackendError(f"backend {backend!r} builds precisions {allowed} on {device!r}, got {precision!r}")


def export_onnx_file(package, precision: str, batch: BatchRange, path: Path, progress,
                     frame: FrameSpec | None = None, float_blocks: int | None = None) -> "object":
    """Export the package's graph (its frame graph for `frame`) to `path`; returns the loaded ONNX proto (for the op
    check). int8 leaves the GEMMs of the embedding and the first `float_blocks` blocks in float (None: the default
    of `engine.export.quantize`)."""
    import onnx

    from .graph import deployable_model
    from .onnx_export import export_onnx

    path = Path(path)
    what = "" if frame is None else f" frame graph, {frame.height}x{frame.width}x{frame.channels} uint8 in"
    with stage(progress, f"exporting ONNX ({'fp32' if precision == 'int8' else precision}{what})"):
        if frame is None:
            model = deployable_model(package.config, package.tensors)
        else:
            from .frame_graph import frame_model

            model = frame_model(package, frame)
        export_onnx(model, package.config, path, batch, "fp32" if precision == "int8" else precision, frame)
    if precision == "int8":
        from .quantize import CALIBRATION_FRAMES, FLOAT_BLOCKS, quantize_int8

        fp32_path = path.with_name(path.stem + ".fp32.onnx")
        path.rename(fp32_path)
        with stage(progress, f"quantizing to int8 Q/DQ (calibrating on {CALIBRATION_FRAMES} synthetic frames)"):
            quantize_int8(fp32_path, path, package.config.preprocessing, package.config.width,
                          FLOAT_BLOCKS if float_blocks is None else float_blocks)
        fp32_path.unlink()
    return onnx.load(str(path))


def _build_onnx(package, precision, batch, directory: Path, progress, frame: FrameSpec | None = None):
    from .onnx_export import graph_ops
    from .trt_ops import unsupported_ops

    proto = export_onnx_file(package, precision, batch, directory / "model.onnx", progress, frame)
    ops = graph_ops(proto)
    blocked = unsupported_ops(ops)
    if blocked:
        progress(f"  note: TensorRT's ONNX parser would refuse ops {', '.join(blocked)}")
    return "model.onnx", {"onnx": {"opset": _opset(proto), "ops": sorted(ops), "tensorrt_parser_ok": not blocked}}


def _opset(proto) -> int:
    return max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
