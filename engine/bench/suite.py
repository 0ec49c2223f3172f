"""The benchmark suite: every backend × precision × batch next to the eager reference and `torch.compile` of it.

Backends are discovered through the registry (`engine.backends.BACKEND_MODULES`) and loaded with
`Predictor.load(path, backend=, device=, precision=)`, so a backend that lands later is measured without changes
here. A precision a backend does not run (`BackendError`) is reported as `unsupported`, any other failure as
`error`, both with the message; the run goes on. Every case runs on the engine's thread budget (`engine.threads`:
torch's, ONNX Runtime's and OpenVINO's pools sized together, numpy's BLAS at one thread), recorded in
`settings.threads`.

Per (backend, precision): load once (`load_s`). Per batch: the first call (`first_call_s`, where lazy compilers
compile; `first_load_s = load_s + first_call_s`), whose output gives the correctness column (max relative error
to the eager reference on the same inputs), then `warmup_s` seconds of untimed runs (at least one) and timed runs
of the backend's runner on a batch already on the device until both `iterations` ran and `duration_s` passed
(trtexec's and perf_analyzer's conventions, see docs/bench.md). Peak memory covers that batch's runs (weights
included). Python warnings and log records of the libraries underneath are counted into the report
(`third_party_warnings`, see `capture.py`) instead of printed between the progress lines.

With `interleave`, every predictor stays loaded and each batch's timed runs go round-robin, one call of each case per
round (`time_interleaved`): on a shared machine a load change then reaches every case alike, and the ratios between
cases (the anchor's above all) compare runs made at the same time. Peak memory is then not measured.

`warnings` lists what makes numbers less trustworthy: a percentile resting on fewer runs than
`measure.samples_needed` asks for, and a 1-minute load average above the logical cores at the start or end.
`gpu_split_ms` (host-to-device copy / compute / device-to-host copy, trtexec's "Host Latency" vs "GPU Compute"):
for a runner that splits its calls (`Runner.run_split`: the tensorrt and onnx runners on a GPU) on a CUDA device, a
second series of timed runs under the same warm-up, duration and iterations, each run timed by the runner itself
(`split_timer`); the first series, the case's latency, stays uninstrumented. Everywhere else it is null and
`gpu_split_reason` says why (`split_unavailable`).

With frame sizes (`frames`), each timed case also measures what a user feels at that batch: uint8 frames in,
masks (or probabilities) out through `Predictor.predict` (decode excluded), and the same path split into its three
steps as the predictor runs them (`prepare` / `infer_batch` / `results`, see `Predictor.frame_path`). Host work is
timed with the host clock, inference with the case's own timer (CUDA events for torch runners on a GPU), and each
entry names its timers. On the "frames" path pre- and postprocessing run inside inference: their entries are null
and `fused_into_infer` says so.
"""

from __future__ import annotations

import gc
import importlib.util
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..backends import BACKEND_MODULES, backend_status
from ..errors import BackendError, HTError, InputError, PackageError
from ..threads import apply_budget, budget
from .capture import ThirdPartyWarnings
from .flops import count_flops
from .machine import machine_info
from .measure import (
    DEFAULT_PERCENTILES,
    LatencyStats,
    PeakMemory,
    gemm_rate,
    relative_error,
    short_percentiles,
    split_summary,
    throughput_fps,
    time_calls,
    time_interleaved,
    time_split_calls,
    timer_kind,
)
from .openvino_anchor import OPENVINO_ANCHOR

SCHEMA_NAME = "ht-engine-bench"
SCHEMA_VERSION = 7
HOST_TIMER = "perf_counter_ns"
EAGER = "reference"
COMPILED = "compiled-reference"
# Table order: the baselines first, then the backends measured against them.
ROLES = ("eager", "compiled", "anchor", "backend")
# Which measured GEMM rate a precision's achieved FLOP rate is compared with (int8/fp8: none is measured).
GEMM_FOR_PRECISION = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}


@dataclass
class BenchOptions:
    source: Path  # a .htpkg package or a built artifact directory
    package: Path | None = None  # the package an artifact was built from (baselines, correctness)
    backends: list | None = None  # None: every registered backend
    precisions: list = field(default_factory=lambda: ["fp32"])
    batches: list = field(default_factory=lambda: [1])
    device: str = "cpu"
    duration_s: float = 2.0  # timed runs last at least this long ...
    iterations: int = 3  # ... and number at least this many
    warmup_s: float = 0.2  # seconds of untimed runs before them (at least one run)
    percentiles: list = field(default_factory=lambda: list(DEFAULT_PERCENTILES))
    compiled_baseline: bool = True
    anchor: bool = True  # OpenVINO on the reference model (CPU): what a CPU user would deploy instead
    time_limit_s: float | None = None
    seed: int = 0
    gemm_duration_s: float = 1.0
    gemm_size: int | None = None  # None: 1024 on CPU, 4096 on CUDA
    frames: list = field(default_factory=list)  # (height, width) frame sizes measured end to end
    interleave: bool = False  # keep every predictor loaded and time one batch's cases round-robin


def _noop(_message: str) -> None:
    pass


def _case(backend: str, precision: str, batch: int, role: str, status: str = "ok", message: str = "") -> dict:
    return {"backend": backend, "precision": precision, "batch": batch, "role": role, "status": status,
            "message": message, "load_s": None, "first_call_s": None, "first_load_s": None, "timer": None,
            "latency_ms": None, "samples_ms": [], "throughput_fps": None, "peak_memory_bytes": None,
            "memory_kind": None, "max_rel_error": None, "mask_agreement": None, "speedup_vs_eager": None, "speedup_vs_compiled": None,
            "gflops_per_s": None, "gemm_fraction": None, "gemm_precision": None, "gpu_split_ms": None,
            "gpu_split_reason": "not measured: the case did not run",
            "time_vs_openvino_reference": None, "frames": []}


def _frame_case(height: int, width: int, frame_path: str | None, status: str = "ok", message: str = "") -> dict:
    return {"height": height, "width": width, "frame_path": frame_path,
            "fused_into_infer": ["preprocess", "postprocess"] if frame_path == "frames" else [],
            "status": status, "message": message, "timers": None, "end_to_end_ms": None, "pre_ms": None,
            "infer_ms": None, "post_ms": None, "end_to_end_vs_forward": None}


def _output_error(actual, expected) -> float | None:
    """`relative_error` of a backend's output to the reference's; None (JSON null) when it has NaN/inf."""
    try:
        error = relative_error(actual, expected)
    except ValueError:
        raise BackendError(f"output shape {tuple(np.shape(actual))} differs from the reference's "
                           f"{tuple(np.shape(expected))}") from None
    return error if math.isfinite(error) else None


def _mask_agreement(actual, expected) -> float:
    """The fraction of pixels whose argmax over the class axis equals the reference's (seg logits `[B,C,H,W]`)."""
    actual = actual.detach().float().cpu().numpy() if hasattr(actual, "detach") else np.asarray(actual)
    expected = expected.numpy() if hasattr(expected, "numpy") else np.asarray(expected)
    return float(np.mean(actual.argmax(1) == expected.argmax(1)))


def split_unavailable(device: str, runner) -> str | None:
    """Why a case has no host/device split (None: it has one), decided from the device and what the runner offers."""
    if not device.startswith("cuda"):
        return (f"measured for artifact runtimes on a GPU only; on {device} nothing crosses a host/device boundary "
                f"and the latency is the whole call on the host clock ({HOST_TIMER})")
    if runner.uses_torch:
        return ("a torch runner on input already on the device, timed with CUDA events around the call "
                "(cuda_events): there are no copies to split off")
    if runner.run_split is None:
        return (f"this runner does not split its calls; its latency is the whole call on the host clock "
                f"({HOST_TIMER}), copies included")
    return None


def gpu_split(runner, batch, device: str, options: BenchOptions) -> tuple:
    """`(gpu_split_ms, gpu_split_reason)` of a case: its runner's `run_split` timed like the case itself (same
    warm-up, duration, iterations and percentiles), or None and why not."""
    reason = split_unavailable(device, runner)
    if reason is not None:
        return None, reason
    try:
        samples = time_split_calls(lambda: runner.run_split(batch), warmup_s=options.warmup_s,
                                   duration_s=options.duration_s, iterations=options.iterations)
    except Exception as exc:  # the case's latency is measured already; a failing split only loses the split
        return None, f"the split runs failed: {type(exc).__name__}: {exc}"
    return split_summary(samples, runner.split_timer, options.percentiles), None


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


class _Suite:
    def __init__(self, options: BenchOptions, progress):
        self.options = options
        self.progress = progress
        self.device = options.device
        self.started = time.perf_counter()
        self.cases: list = []
        self.reference_outputs: dict = {}
        self.inputs: dict = {}
        self.third_party = ThirdPartyWarnings()
        self.majority: dict = {}  # batch → fraction of the eager reference's mask pixels in its most frequent class
        self.loaded: list = []  # --interleave: (predictor, backend, precision, role, load_s), measured at the end

    def out_of_time(self) -> bool:
        limit = self.options.time_limit_s
        return limit is not None and time.perf_counter() - self.started > limit

    def batch_input(self, batch: int):
        """The seeded batch every case of `batch` runs: synthetic ultrasound frames (speckle, lesions, shadows) of
        varied sizes through the package's own preprocessing, what int8 calibration and a user's frames look like."""
        import torch

        from ..preprocess import preprocess_frames
        from ..synthetic import synthetic_frame

        if batch not in self.inputs:
            frames = [synthetic_frame(360 + 7 * index, 480 + 11 * index, seed=self.options.seed * 1000 + index)[0]
                      for index in range(batch)]
            self.inputs[batch] = torch.from_numpy(preprocess_frames(frames, self.config.preprocessing))
        return self.inputs[batch]

    def skipped_all(self, backend, precision, role, status, message) -> None:
        for batch in self.options.batches:
            self.cases.append(_case(backend, precision, batch, role, status, message))
        self.progress(f"  {backend} {precision}: {status}: {message}")

    def measure(self, backend: str, precision: str, role: str, make_predictor) -> None:
        if self.out_of_time():
            self.skipped_all(backend, precision, role, "skipped", self.time_limit_message())
            return
        self.progress(f"{backend} {precision}: loading")
        with self.third_party.capture():
            self.load_and_measure(backend, precision, role, make_predictor)

    def load_and_measure(self, backend: str, precision: str, role: str, make_predictor) -> None:
        memory = PeakMemory(self.device)
        start = time.perf_counter()
        try:
            predictor = make_predictor()
        except BackendError as exc:
            self.skipped_all(backend, precision, role, "unsupported", str(exc))
            return
        except Exception as exc:  # a backend that fails to load must not take the other measurements with it
            self.skipped_all(backend, precision, role, "error", f"load failed: {type(exc).__name__}: {exc}")
            return
        load_s = time.perf_counter() - start
        if self.options.interleave:
            self.loaded.append((predictor, backend, precision, role, load_s))
            return
        try:
            for batch in self.options.batches:
                self.cases.append(self.measure_batch(predictor, backend, precision, role, batch, load_s, memory))
        finally:
            del predictor
            self.release()

    def release(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def measure_interleaved(self) -> None:
        """`--interleave`: per batch, every loaded predictor's first call and warm-up, then their timed runs
        round-robin (`time_interleaved`), then each case's split and frame measurements on its own. Peak memory is
        not measured: every predictor is resident at once."""
        loaded, self.loaded = self.loaded, []
        try:
            for index, batch in enumerate(self.options.batches):
                if index and self.out_of_time():
                    for _, backend, precision, role, _ in loaded:
                        self.cases.append(_case(backend, precision, batch, role, "skipped", self.time_limit_message()))
                    continue
                started = []
                for predictor, backend, precision, role, load_s in loaded:
                    self.progress(f"{backend} {precision}: batch {batch}: first call")
                    with self.third_party.capture():
                        case, call, timer = self.first_call(predictor, backend, precision, role, batch, load_s, None)
                    self.cases.append(case)
                    if call is not None:
                        started.append((predictor, case, call, timer))
                if not started:
                    continue
                self.progress(f"batch {batch}: timing {len(started)} cases round-robin")
                import torch

                try:
                    with self.third_party.capture(), torch.inference_mode():
                        series = time_interleaved([(call, timer) for _, _, call, timer in started],
                                                  warmup_s=self.options.warmup_s, duration_s=self.options.duration_s,
                                                  iterations=self.options.iterations, device=self.device)
                except Exception as exc:  # noqa: BLE001 — reported on every case of the batch; the run goes on
                    for _, case, _, _ in started:
                        case.update(status="error", message=f"run failed: {type(exc).__name__}: {exc}")
                    continue
                for (predictor, case, _, timer), samples in zip(started, series):
                    with self.third_party.capture():
                        self.finish_case(predictor, case, samples, timer, None)
        finally:
            del loaded
            self.release()

    def time_limit_message(self) -> str:
        return (f"the time limit of {self.options.time_limit_s:g} s was reached before this case started "
                f"(raise --time-limit)")

    def measure_batch(self, predictor, backend, precision, role, batch, load_s, memory) -> dict:
        import torch

        case, call, timer = self.first_call(predictor, backend, precision, role, batch, load_s, memory)
        if call is None:
            return case
        try:
            with torch.inference_mode():
                samples = time_calls(call, timer=timer, warmup_s=self.options.warmup_s,
                                     duration_s=self.options.duration_s, iterations=self.options.iterations,
                                     device=self.device)
        except HTError as exc:
            case.update(status="error", message=f"{type(exc).__name__}: {exc}")
            return case
        except Exception as exc:  # a crash at one batch is reported; the other cases still run
            case.update(status="error", message=f"run failed: {type(exc).__name__}: {exc}")
            return case
        return self.finish_case(predictor, case, samples, timer, memory)

    def first_call(self, predictor, backend, precision, role, batch, load_s, memory) -> tuple:
        """`(case, call, timer)`: the case with its first call timed and its output checked, the call to time and
        its timer; `call` is None when the case ends here (skipped, unsupported, failed)."""
        import torch

        case = _case(backend, precision, batch, role)
        case["load_s"] = load_s
        # A backend that finished loading is measured at its first batch whatever the clock says: its load time is
        # already spent, and that one case is what the limit would otherwise throw away.
        if batch != self.options.batches[0] and self.out_of_time():
            case.update(status="skipped", message=self.time_limit_message())
            return case, None, None
        runner = predictor.runner
        if runner.max_batch is not None and batch > runner.max_batch:
            case.update(status="unsupported", message=f"batch {batch} exceeds this artifact's maximum batch "
                        f"{runner.max_batch}")
            return case, None, None
        images = self.batch_input(batch)
        if runner.uses_torch:
            device_images = images.to(self.device).contiguous()
        else:
            device_images = images.numpy()

        def call():
            return runner.run(device_images)

        try:
            if memory is not None:
                memory.reset()
            start = time.perf_counter()
            with torch.inference_mode():
                output = call()
            _synchronize(self.device)
            case["first_call_s"] = time.perf_counter() - start
            case["first_load_s"] = load_s + case["first_call_s"]
            self.check_output(case, output)
            del output
        except HTError as exc:
            case.update(status="error", message=f"{type(exc).__name__}: {exc}")
            return case, None, None
        except Exception as exc:  # a crash at one batch is reported; the other cases still run
            case.update(status="error", message=f"run failed: {type(exc).__name__}: {exc}")
            return case, None, None
        return case, call, timer_kind(self.device, runner.uses_torch)

    def finish_case(self, predictor, case: dict, samples: list, timer: str, memory) -> dict:
        """Fill `case` from its timed `samples`: statistics, rates, the host/device split and the frame path."""
        import torch

        batch, precision = case["batch"], case["precision"]
        runner = predictor.runner
        if memory is not None:
            case["peak_memory_bytes"] = memory.peak()
            case["memory_kind"] = memory.kind
        stats = LatencyStats.from_samples(samples, self.options.percentiles)
        case.update(timer=timer, latency_ms=stats.to_dict(), samples_ms=[round(s, 4) for s in samples],
                    throughput_fps=throughput_fps(batch, samples))
        case["gflops_per_s"] = self.flops_per_frame * case["throughput_fps"] / 1e9
        gemm = self.gemm.get(GEMM_FOR_PRECISION.get(precision, ""))
        if gemm is not None:
            case["gemm_precision"] = gemm["precision"]
            case["gemm_fraction"] = case["gflops_per_s"] / gemm["gflops"]
        error = "" if case["max_rel_error"] is not None or case["role"] == "eager" else "; outputs contain NaN/inf"
        self.progress(f"  {case['backend']} {precision} batch {batch}: median {stats.median_ms:.2f} ms over "
                      f"{stats.runs} runs, {case['throughput_fps']:.2f} frames/s, max rel err "
                      f"{_fmt_err(case['max_rel_error'])}{error}")
        device_images = self.batch_input(batch)
        device_images = device_images.to(self.device).contiguous() if runner.uses_torch else device_images.numpy()
        case["gpu_split_ms"], case["gpu_split_reason"] = gpu_split(runner, device_images, self.device, self.options)
        split = case["gpu_split_ms"]
        if split is not None:
            self.progress(f"  batch {batch}: Host Latency median {split['host_latency_ms']['median_ms']:.3f} ms; "
                          f"medians H2D {split['h2d_ms']['median_ms']:.3f}, GPU Compute "
                          f"{split['compute_ms']['median_ms']:.3f}, D2H {split['d2h_ms']['median_ms']:.3f} ms "
                          f"({split['timer']}, {split['runs']} runs)")
        elif runner.run_split is not None and self.device.startswith("cuda"):
            self.progress(f"  batch {batch}: no host/device split: {case['gpu_split_reason']}")
        with torch.inference_mode():
            case["frames"] = [self.measure_frames(predictor, batch, height, width, stats.median_ms, timer)
                              for height, width in self.options.frames]
        return case

    def frame_batch(self, batch: int, height: int, width: int) -> list:
        generator = np.random.default_rng([self.options.seed, batch, height, width])
        return list(generator.integers(0, 256, size=(batch, height, width), dtype=np.uint8))

    def measure_frames(self, predictor, batch: int, height: int, width: int, forward_ms: float,
                       infer_timer: str) -> dict:
        """One frame size at `batch`: `predict` end to end, then its three steps, each timed on its own."""
        entry = _frame_case(height, width, predictor.frame_path)
        frames = self.frame_batch(batch, height, width)
        sizes = [(height, width)] * batch
        options = self.options

        def timed(call, timer: str = HOST_TIMER) -> dict:
            samples = time_calls(call, timer=timer, warmup_s=options.warmup_s, duration_s=options.duration_s,
                                 iterations=options.iterations, device=self.device)
            return LatencyStats.from_samples(samples, options.percentiles).to_dict()

        try:
            predictor.predict(frames, batch_size=batch)  # first call: lazy allocations, not timed
            entry["end_to_end_ms"] = timed(lambda: predictor.predict(frames, batch_size=batch))
            prepared = predictor.prepare(frames)
            outputs = predictor.infer_batch(prepared)
            entry["infer_ms"] = timed(lambda: predictor.infer_batch(prepared), infer_timer)
            fused = entry["fused_into_infer"]
            if "preprocess" not in fused:
                entry["pre_ms"] = timed(lambda: predictor.prepare(frames))
            if "postprocess" not in fused:
                entry["post_ms"] = timed(lambda: predictor.results(outputs, sizes))
        except HTError as exc:
            entry.update(status="unsupported" if isinstance(exc, InputError) else "error",
                         message=f"{type(exc).__name__}: {exc}")
            return entry
        except Exception as exc:  # one frame size failing must not take the case's other measurements with it
            entry.update(status="error", message=f"frame path failed: {type(exc).__name__}: {exc}")
            return entry
        entry["timers"] = {"end_to_end": HOST_TIMER, "pre": None if entry["pre_ms"] is None else HOST_TIMER,
                           "infer": infer_timer, "post": None if entry["post_ms"] is None else HOST_TIMER}
        median = entry["end_to_end_ms"]["median_ms"]
        entry["end_to_end_vs_forward"] = median / forward_ms if forward_ms > 0 else None
        self.progress(f"    frames {height}x{width} ({entry['frame_path']} path): end to end {median:.2f} ms "
                      f"({entry['end_to_end_vs_forward'] or 0:.2f}x forward): pre {_fmt_ms(entry['pre_ms'])}, "
                      f"infer {_fmt_ms(entry['infer_ms'])}, post {_fmt_ms(entry['post_ms'])}")
        return entry

    def measure_anchor(self, package_path: Path) -> None:
        """OpenVINO on the reference model, f32 and (where the CPU has bf16 units) bf16; on the CPU only."""
        from ..export.openvino import cpu_has_bf16
        from .openvino_anchor import ANCHOR_PRECISIONS, convert_reference, openvino_reference

        converted = []  # one conversion serves every precision (the first precision's load time includes it)

        def load(precision: str):
            if not converted:
                converted.append(convert_reference(package_path))
            return openvino_reference(package_path, precision, conversion=converted[0])

        for precision in ANCHOR_PRECISIONS:
            reason = anchor_unavailable(self.device, precision, cpu_has_bf16())
            if reason is not None:
                self.skipped_all(OPENVINO_ANCHOR, precision, "anchor", "unsupported", reason)
                continue
            self.measure(OPENVINO_ANCHOR, precision, "anchor", lambda p=precision: load(p))

    def check_output(self, case: dict, output) -> None:
        batch = case["batch"]
        if case["role"] == "eager":
            reference = output.detach().float().cpu() if hasattr(output, "detach") else np.asarray(output)
            self.reference_outputs[batch] = reference
            case["max_rel_error"] = 0.0
            case["mask_agreement"] = 1.0 if self.config.task == "seg" else None
            if self.config.task == "seg":
                classes = np.asarray(reference).argmax(1)
                self.majority[batch] = float(np.bincount(classes.ravel()).max() / classes.size)
            return
        if batch not in self.reference_outputs:
            case["message"] = "no eager reference output at this batch to compare with"
            return
        case["max_rel_error"] = _output_error(output, self.reference_outputs[batch])
        if self.config.task == "seg":
            case["mask_agreement"] = _mask_agreement(output, self.reference_outputs[batch])
        if case["max_rel_error"] is None:
            case.update(status="error", message="outputs contain NaN or infinite values")

    def run(self, package_path: Path, artifact: dict | None) -> list:
        from ..runtime import Predictor

        options = self.options
        backends, precisions = selected_cases(options, artifact)
        # The eager baseline first (its outputs are every case's correctness reference), then the backends asked
        # for, then `torch.compile(reference)`: its compile is the slowest load, so under --time-limit the baseline
        # is what runs out of time, not the engines being compared.
        self.measure(EAGER, "fp32", "eager",
                     lambda: Predictor.load(package_path, backend="reference", device=self.device))
        for backend in backends:
            usable, reason = backend_status(backend, self.device)
            for precision in precisions:
                if backend == EAGER and precision == "fp32" and artifact is None:
                    continue  # measured above as the eager baseline
                if not usable:
                    self.skipped_all(backend, precision, "backend", "unsupported",
                                     f"backend {backend!r} cannot run on {self.device!r}: {reason}")
                    continue
                path = options.source if artifact is not None else package_path
                self.measure(backend, precision, "backend",
                             lambda b=backend, p=precision, s=path: Predictor.load(s, backend=b, device=self.device,
                                                                                 precision=p))
        if options.anchor:
            self.measure_anchor(package_path)
        if options.compiled_baseline:
            self.measure(COMPILED, "fp32", "compiled", lambda: compiled_reference(package_path, self.device))
        if options.interleave:
            self.measure_interleaved()
        self.cases.sort(key=lambda case: ROLES.index(case["role"]))  # baselines first
        add_speedups(self.cases)
        return self.cases


def selected_cases(options: BenchOptions, artifact: dict | None) -> tuple:
    """`(backends, precisions)` to measure; an artifact source fixes both to the artifact's own."""
    if artifact is not None:
        return [artifact["backend"]], [artifact["precision"]]
    backends = list(options.backends) if options.backends else list(BACKEND_MODULES)
    unknown = [name for name in backends if name not in BACKEND_MODULES]
    if unknown:
        raise BackendError(f"unknown backend {', '.join(map(repr, unknown))}; this engine has: "
                           f"{', '.join(BACKEND_MODULES)}")
    return backends, list(options.precisions)


def compiled_reference(package_path: Path, device: str):
    """A Predictor over `torch.compile` of the eager reference model (default mode), the second baseline."""
    import torch

    from ..backends.reference import load_model
    from ..package import load_package
    from ..runner import Runner
    from ..runtime import Predictor

    package = load_package(package_path)
    model = torch.compile(load_model(package.config, package.tensors).to(device))

    def run(batch):
        return model(batch)

    cfg = package.config
    return Predictor(Runner(run=run, uses_torch=True, device=device, precision="fp32"), task=cfg.task,
                     classes=cfg.classes, preprocessing=cfg.preprocessing, image_size=cfg.image_size,
                     backend=COMPILED, source=Path(package_path), sha256=package.sha256)


def anchor_unavailable(device: str, precision: str, cpu_bf16: bool) -> str | None:
    """Why the OpenVINO anchor cannot run at `precision` here (None: it can)."""
    if device != "cpu":
        return f"the OpenVINO anchor is a CPU baseline; this bench runs on {device}"
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install 'ht-engine[openvino]')"
    if precision == "bf16" and not cpu_bf16:
        return "this CPU has no bf16 units (neither AVX-512 BF16 nor AMX): OpenVINO would run bf16 in f32"
    return None


def add_speedups(cases: list) -> None:
    """Ratios of each case's median latency to the eager and compiled baselines at the same batch (>1: faster), and
    its time over the OpenVINO anchor's at each anchor precision (<1: faster than OpenVINO on the reference)."""
    baseline, anchor = {}, {}
    for case in cases:
        if case["status"] != "ok":
            continue
        if case["role"] in ("eager", "compiled"):
            baseline[(case["role"], case["batch"])] = case["latency_ms"]["median_ms"]
        elif case["role"] == "anchor":
            anchor[(case["precision"], case["batch"])] = case["latency_ms"]["median_ms"]
    for case in cases:
        if case["status"] != "ok":
            continue
        median = case["latency_ms"]["median_ms"]
        for role in ("eager", "compiled"):
            reference = baseline.get((role, case["batch"]))
            if reference is not None and median > 0:
                case[f"speedup_vs_{role}"] = reference / median
        ratios = {precision: median / anchor_ms for (precision, batch), anchor_ms in anchor.items()
                  if batch == case["batch"] and anchor_ms > 0}
        case["time_vs_openvino_reference"] = ratios or None


# Above this fraction of pixels in one class, the eager masks are (nearly) constant and any backend agrees with them.
ONE_CLASS_FRACTION = 0.99


def mask_warnings(majority: dict) -> list:
    """One warning per batch whose eager masks are one class at >= `ONE_CLASS_FRACTION` of the pixels."""
    return [{"kind": "one_class_masks", "backend": EAGER, "precision": "fp32", "batch": batch,
             "message": f"batch {batch}: the eager reference's masks are one class at {fraction:.2%} of the pixels, "
                        f"so mask agreement says little here (the logits' error still does)"}
            for batch, fraction in sorted(majority.items()) if fraction >= ONE_CLASS_FRACTION]


def sample_warnings(cases: list) -> list:
    """One warning per timed case whose percentiles rest on too few runs (`measure.samples_needed`)."""
    found = []
    for case in cases:
        stats = case["latency_ms"]
        if stats is None:
            continue
        short = short_percentiles(stats)
        if short:
            needs = ", ".join(f"{key[:-3]} needs {need}" for key, need in short)
            found.append({"kind": "few_samples", "backend": case["backend"], "precision": case["precision"],
                          "batch": case["batch"],
                          "message": f"{case['backend']} {case['precision']} batch {case['batch']}: "
                                     f"{stats['runs']} timed runs ({needs}; raise --iterations or --duration)"})
    return found


def load_warning(when: str) -> list:
    """A warning when the 1-minute load average exceeds the logical cores: other work shares the machine."""
    cores = os.cpu_count()
    if not hasattr(os, "getloadavg") or cores is None:
        return []
    load = os.getloadavg()[0]
    if load <= cores:
        return []
    return [{"kind": "load_average", "backend": None, "precision": None, "batch": None,
             "message": f"1-minute load average {load:.1f} at the {when} of the run exceeds the {cores} logical "
                        f"cores: other work competes for the CPU and the timings are slower and noisier"}]


def _fmt_err(value) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def _fmt_ms(stats: dict | None) -> str:
    return "fused" if stats is None else f"{stats['median_ms']:.2f} ms"


def resolve_source(options: BenchOptions) -> tuple:
    """`(package path, artifact manifest or None)`; an artifact needs the package it was built from."""
    from ..artifacts import read_manifest

    source = Path(options.source)
    if not source.exists():
        raise PackageError(f"{source} does not exist: expected a .htpkg package or a built artifact directory")
    if not source.is_dir():
        if options.package is not None:
            raise BackendError("--package is only for artifact sources; the source is already a package")
        return source, None
    manifest = read_manifest(source)
    if "frame" in manifest:
        raise BackendError(f"{source} is a frame artifact (uint8 frames in, no tensor forward): ht-engine bench "
                           f"measures tensor artifacts; build one without --frame-size")
    if options.package is None:
        raise PackageError(f"{source} is a built {manifest.get('backend')!r} artifact: give the package it was "
                           f"built from with --package M.htpkg (the eager and compiled baselines and the "
                           f"correctness column run it)")
    return Path(options.package), manifest


def run_bench(options: BenchOptions, progress=_noop, command: str | None = None) -> dict:
    """Measure everything `options` asks for and return the report (a JSON-able dict, see bench_schema.json)."""
    import torch

    from ..package import load_package

    package_path, artifact = resolve_source(options)
    selected_cases(options, artifact)
    for batch in options.batches:
        if batch < 1:
            raise BackendError(f"batch sizes must be >= 1, got {batch}")
    if not options.percentiles or not all(0 < p <= 100 for p in options.percentiles):
        raise InputError(f"percentiles must be numbers in (0, 100], got {options.percentiles}")
    if options.iterations < 1 or options.warmup_s < 0 or options.duration_s < 0:
        raise InputError(f"iterations must be >= 1 and warmup/duration >= 0 s, got {options.iterations}, "
                         f"{options.warmup_s}, {options.duration_s}")
    started_loaded = load_warning("start")
    apply_budget()  # before the GEMM rate and the baselines, so every case runs on the pools the backends get
    suite = _Suite(options, progress)
    package = load_package(package_path)
    if artifact is not None and artifact.get("package_sha256") not in (None, package.sha256):
        raise PackageError(f"{options.source} was built from a package with sha256 "
                           f"{artifact['package_sha256'][:16]}…, not from {package_path} ({package.sha256[:16]}…)")
    cfg = package.config
    sha256 = package.sha256
    suite.config = cfg
    pruned, full = count_flops(cfg, pruned=True), count_flops(cfg, pruned=False)
    suite.flops_per_frame = pruned.total
    del package
    progress(f"model {cfg.arch} {cfg.task}: {pruned.total / 1e9:.2f} GFLOP/frame after the exact rewrites "
             f"({full.total / 1e9:.2f} as the reference runs it)")
    gemm_precisions = ["fp32", "bf16"] + (["fp16"] if options.device.startswith("cuda") else [])
    suite.gemm = {}
    for precision in gemm_precisions:
        suite.gemm[precision] = gemm_rate(precision, options.device, size=options.gemm_size,
                                            duration_s=options.gemm_duration_s)
        progress(f"GEMM rate {precision}: {suite.gemm[precision]['gflops']:.1f} GFLOP/s peak, "
                 f"{suite.gemm[precision]['median_gflops']:.1f} median "
                 f"({suite.gemm[precision]['size']}³ matmul)")
    settings = {key: (str(value) if isinstance(value, Path) else value)
                for key, value in asdict(options).items()}
    settings["frames"] = [list(size) for size in options.frames]  # JSON's form, also when given as tuples
    report = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "machine": machine_info(options.device),
        "model": {"source": str(options.source), "package": str(package_path), "arch": cfg.arch, "task": cfg.task,
                  "num_classes": cfg.num_classes, "image_size": cfg.image_size, "filter_kind": cfg.filter_kind,
                  "layers": cfg.layers, "extract_layers": list(cfg.extract_layers), "sha256": sha256},
        "settings": settings,
        "flops_per_frame": {"pruned": pruned.to_dict(), "reference": full.to_dict()},
        "gemm": suite.gemm,
        "cases": suite.run(package_path, artifact),
    }
    report["warnings"] = (started_loaded + sample_warnings(report["cases"]) + mask_warnings(suite.majority)
                          + load_warning("end"))
    report["third_party_warnings"] = suite.third_party.to_list()
    report["settings"]["torch_threads"] = torch.get_num_threads()
    report["settings"]["threads"] = budget()
    report["wall_s"] = time.perf_counter() - suite.started
    return report
