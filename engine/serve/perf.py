"""Triton's own load generator, perf_analyzer, against a running server of model `ht` (`ht-engine bench --serve`).

perf_analyzer is a C++ binary: the tritonclient 2.51.0 wheel's, the last whose binary runs on glibc 2.36 (`make`
installs it under `<environment>/opt/perf_analyzer`). Three of its habits are handled here rather than left to the
user:

- It links `libb64.so.0d` and `libcudart.so.12`, which a CPU-only machine lacks. nvidia-pytriton ships copies of both
  under hashed names (`nvidia_pytriton.libs/libb64-<hash>.so.0d`). When, and only when, the loader refuses to start
  the binary for a missing library, a directory of links under the proper names goes first on its `LD_LIBRARY_PATH`,
  so a GPU machine with its own libcudart keeps it. The directory stays in the engine cache, so the command lines
  printed and recorded run again as they are.
- A bounded run (`--request-count N`) ends its measurement window by polling once a second (the count-based branch
  of `InferenceProfiler::Measure`), so its own `Inferences/Second` is N over a whole number of seconds: 30 requests
  that take 0.1 s come out as 30 infer/s. Throughput here follows from the closed loop instead: C clients, each
  sending its next request when the previous answer arrives, complete C / (mean latency) requests per second
  (Little's law). The last requests of a run drain with fewer than C in flight, which this does not see: it reads
  high by up to about (C - 1) / (2 N) for N requests (a server that serves one request at a time; less with
  batching), so N of 8 C or more keeps it within a few percent. perf_analyzer's own figure is kept next to it
  (`reported_infer_s`).
- Its CSV gives every time in microseconds; the results here are in milliseconds.

Server-side times (queue, compute input/infer/output) are the server's statistics for model `ht` over the window,
so they include any other client's requests in that window.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import settings
from ..errors import BenchError
from ..fileio import atomic_write
from .repository import INPUT_NAME, MODEL_NAME
from .server import PYTRITON_LIBRARIES, pytriton_package

PROTOCOLS = ("http", "grpc")
# The wheel `make` installs perf_analyzer from (Makefile: PERF_ANALYZER_TRITONCLIENT).
TRITONCLIENT_WITH_PERF_ANALYZER = "2.51.0"
MAX_CONCURRENCY = 1024
# The dynamic loader's words for a library it cannot find (glibc's ld.so).
MISSING_LIBRARY = re.compile(r"error while loading shared libraries: (?P<soname>[^:\s]+): cannot open shared object")
VERSION = re.compile(r"Perf Analyzer Version (?P<version>\S+)")
# At most this many libraries are linked into the shim before perf_analyzer is given up on (it lacks two here).
MAX_SHIMMED_LIBRARIES = 8
PROBE_TIMEOUT_S = 30.0
STATUS_TIMEOUT_S = 10.0

# perf_analyzer's CSV columns (2.51, `-f FILE --verbose-csv`, no `--percentile`: then `Avg latency` is written).
# Every time column is in microseconds.
CSV_TIMES_US = {
    "avg_ms": "Avg latency",
    "p50_ms": "p50 latency",
    "p90_ms": "p90 latency",
    "p95_ms": "p95 latency",
    "p99_ms": "p99 latency",
    "client_send_ms": "Client Send",
    "network_ms": "Network+Server Send/Recv",
    "client_recv_ms": "Client Recv",
    "queue_ms": "Server Queue",
    "compute_input_ms": "Server Compute Input",
    "compute_infer_ms": "Server Compute Infer",
    "compute_output_ms": "Server Compute Output",
}
CSV_CONCURRENCY = "Concurrency"
CSV_THROUGHPUT = "Inferences/Second"


def install_hint() -> str:
    target = Path(sys.prefix) / "opt" / "perf_analyzer"
    return (f"install it with `{sys.executable} -m pip install --no-deps --target {target} "
            f"tritonclient=={TRITONCLIENT_WITH_PERF_ANALYZER}` (make does; later wheels' binaries need glibc 2.38), "
            f"or set {settings.PERF_ANALYZER.name} to a perf_analyzer binary (docs/serving.md)")


def find_perf_analyzer(prefix: Path | None = None) -> Path:
    """The perf_analyzer binary: `HT_PERF_ANALYZER`, else `perf_analyzer` on PATH, else
    `<prefix>/opt/perf_analyzer/bin/perf_analyzer` (`prefix`: the running environment's, `sys.prefix`)."""
    configured = settings.PERF_ANALYZER.get()
    if configured is not None:
        if not (configured.is_file() and os.access(configured, os.X_OK)):
            raise BenchError(f"{settings.PERF_ANALYZER.name}={configured} is not an executable file: point it at a "
                             f"perf_analyzer binary, or unset it to look on PATH and in the environment")
        return configured
    on_path = shutil.which("perf_analyzer")
    if on_path is not None:
        return Path(on_path)
    bundled = Path(sys.prefix if prefix is None else prefix) / "opt" / "perf_analyzer" / "bin" / "perf_analyzer"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return bundled
    raise BenchError(f"perf_analyzer (Triton's load generator) is not installed: {settings.PERF_ANALYZER.name} is "
                     f"unset, there is no perf_analyzer on PATH, and {bundled} does not exist; {install_hint()}")


def missing_library(output: str) -> str | None:
    """The soname the dynamic loader could not find, from a failed start's output (None: not that failure)."""
    match = MISSING_LIBRARY.search(output)
    return match.group("soname") if match else None


def bundled_copy(soname: str, directory: Path | None) -> Path | None:
    """nvidia-pytriton's copy of library `soname` in `directory` (auditwheel names it `<stem>-<hash><suffix>`, e.g.
    `libcudart.so.12` as `libcudart-09529672.so.12.6.77`), or None."""
    if directory is None or not directory.is_dir() or ".so" not in soname:
        return None
    stem, suffix = soname.split(".so", 1)
    matches = sorted(directory.glob(f"{stem}-*.so{suffix}*"))
    return matches[0] if matches else None


def shim_directory() -> Path:
    """Where the links under proper library names live (kept, so recorded command lines run again)."""
    return settings.cache_root() / "perf_analyzer" / "lib"


def link_library(directory: Path, soname: str, target: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{soname}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, directory / soname)


def library_environment(library_dir: Path | None, base: dict | None = None) -> dict:
    """`base` (default: this process's environment) with `library_dir` first on LD_LIBRARY_PATH, when given."""
    env = dict(os.environ if base is None else base)
    if library_dir is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(library_dir)] + ([env["LD_LIBRARY_PATH"]]
                                                                       if env.get("LD_LIBRARY_PATH") else []))
    return env


def output_tail(output: str, lines: int = 20) -> str:
    """The end of perf_analyzer's output that says what went wrong: its usage text (printed after an option error)
    is cut off, blank lines dropped."""
    text = output.split("\nUsage:", 1)[0]
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) or "(no output)"


def _probe(binary: Path, library_dir: Path | None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(binary), "--version"], env=library_environment(library_dir),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{binary} --version did not answer within {PROBE_TIMEOUT_S:.0f} s") from None
    except OSError as exc:
        raise BenchError(f"{binary} cannot be started ({exc.strerror or exc}); {install_hint()}") from None


@dataclass(frozen=True)
class PerfAnalyzer:
    """A perf_analyzer binary that starts here: its path, the shim directory it needs (None: none), its version."""

    binary: Path
    library_dir: Path | None
    version: str

    @classmethod
    def load(cls, binary: Path | None = None, libraries: Path | None = None,
             shim: Path | None = None) -> "PerfAnalyzer":
        """Find perf_analyzer (or take `binary`) and make sure it starts. A library the loader cannot find is linked
        from `libraries` (default: nvidia-pytriton's `nvidia_pytriton.libs`) into `shim` (default:
        `shim_directory()`), one at a time, as long as the loader names one."""
        binary = find_perf_analyzer() if binary is None else binary
        if libraries is None:
            package = pytriton_package()
            libraries = None if package is None else package.parent / PYTRITON_LIBRARIES
        shim = shim_directory() if shim is None else shim
        library_dir = None
        for _ in range(MAX_SHIMMED_LIBRARIES + 1):
            done = _probe(binary, library_dir)
            if done.returncode == 0:
                match = VERSION.search(done.stdout)
                return cls(binary, library_dir, match.group("version") if match else "unknown")
            soname = missing_library(done.stdout)
            if soname is None:
                raise BenchError(f"{binary} --version failed (exit code {done.returncode}): "
                                 f"{output_tail(done.stdout)}")
            copy = bundled_copy(soname, libraries)
            if copy is None:
                raise BenchError(f"{binary} needs {soname}, which this machine lacks and nvidia-pytriton does not "
                                 f"ship (looked in {libraries}): install the library, or `pip install --no-deps "
                                 f"nvidia-pytriton`, whose copies of libb64 and libcudart it can use")
            link_library(shim, soname, copy)
            library_dir = shim
        raise BenchError(f"{binary} still lacks libraries after {MAX_SHIMMED_LIBRARIES} were linked into {shim}: "
                         f"{output_tail(done.stdout)}")

    def environment(self, base: dict | None = None) -> dict:
        return library_environment(self.library_dir, base)

    def command_line(self, arguments: list) -> str:
        """The shell command that runs perf_analyzer with `arguments` as it is run here."""
        prefix = f"LD_LIBRARY_PATH={shlex.quote(str(self.library_dir))} " if self.library_dir is not None else ""
        return prefix + shlex.join([str(self.binary), *map(str, arguments)])

    def run(self, arguments: list, timeout_s: float, what: str) -> str:
        """Run perf_analyzer to its end (killed after `timeout_s`); its output, or a `BenchError` with its end."""
        try:
            done = subprocess.run([str(self.binary), *map(str, arguments)], env=self.environment(),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            raise BenchError(f"perf_analyzer did not finish {what} within {timeout_s:g} s and was stopped (allow "
                             f"more time or send fewer requests); the end of its output:\n{output_tail(output)}\n"
                             f"command: {self.command_line(arguments)}") from None
        if done.returncode != 0:
            raise BenchError(f"perf_analyzer failed {what} (exit code {done.returncode}):\n{output_tail(done.stdout)}"
                             f"\ncommand: {self.command_line(arguments)}")
        return done.stdout


@dataclass(frozen=True)
class PerfLevel:
    """One concurrency level: throughput, client latency, and where a request's time went. Times are in ms, means per
    request except the percentiles."""

    concurrency: int
    throughput_infer_s: float  # concurrency / mean latency (see the module docstring)
    reported_infer_s: float  # perf_analyzer's own Inferences/Second
    avg_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    client_send_ms: float
    network_ms: float  # network and the server's own receive/send
    client_recv_ms: float
    queue_ms: float
    compute_input_ms: float
    compute_infer_ms: float
    compute_output_ms: float

    @property
    def compute_ms(self) -> float:
        return self.compute_input_ms + self.compute_infer_ms + self.compute_output_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "compute_ms": self.compute_ms}


def _number(row: dict, column: str) -> float:
    text = (row.get(column) or "").strip()
    try:
        return float(text)
    except ValueError:
        raise BenchError(f"perf_analyzer's CSV has {text!r} in column {column!r}, not a number") from None


def parse_csv(text: str) -> list:
    """perf_analyzer's CSV (`-f FILE --verbose-csv`, concurrency mode) → one `PerfLevel` per row."""
    reader = csv.DictReader(io.StringIO(text))
    needed = [CSV_CONCURRENCY, CSV_THROUGHPUT, *CSV_TIMES_US.values()]
    missing = [column for column in needed if column not in (reader.fieldnames or [])]
    if missing:
        raise BenchError(f"perf_analyzer's CSV lacks the columns {', '.join(missing)} (it has: "
                         f"{', '.join(reader.fieldnames or []) or 'nothing'}); it is read from `-f FILE "
                         f"--verbose-csv` without `--percentile`, as perf_analyzer {TRITONCLIENT_WITH_PERF_ANALYZER} "
                         f"writes it")
    levels = []
    for row in reader:
        concurrency = int(_number(row, CSV_CONCURRENCY))
        times = {name: _number(row, column) / 1000.0 for name, column in CSV_TIMES_US.items()}
        if concurrency < 1 or times["avg_ms"] <= 0:
            raise BenchError(f"perf_analyzer's CSV row {row} has no completed requests (concurrency {concurrency}, "
                             f"mean latency {times['avg_ms']} ms)")
        levels.append(PerfLevel(concurrency=concurrency, throughput_infer_s=concurrency * 1000.0 / times["avg_ms"],
                                reported_infer_s=_number(row, CSV_THROUGHPUT), **times))
    if not levels:
        raise BenchError("perf_analyzer's CSV holds a header and no measurement")
    return levels


def write_input_data(path: Path, frames: np.ndarray) -> Path:
    """uint8 frames `[n,H,W]` (or `[n,H,W,3]`) → perf_analyzer's `--input-data` JSON at `path`: one step per frame,
    each the `frames` tensor of a one-frame request (its shape without the batch dimension, its pixels base64)."""
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or len(frames) == 0:
        raise BenchError(f"input frames must be uint8 [n,H,W] or [n,H,W,3] with n >= 1, got {frames.dtype} "
                         f"{list(frames.shape)}")
    steps = [{INPUT_NAME: {"shape": list(frame.shape), "b64": base64.b64encode(frame.tobytes()).decode("ascii")}}
             for frame in frames]
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps({"data": steps})))
    return path


def phantom_frames(height: int, width: int, count: int = 8, seed: int = 0) -> np.ndarray:
    """`count` consecutive frames of the seeded phantom cine (engine.phantom), uint8 `[count,H,W]`."""
    from ..phantom import phantom_cine

    return phantom_cine(frames=count, height=height, width=width, seed=seed).frames


def cached_input_path(height: int, width: int, count: int, seed: int) -> Path:
    """Where the phantom frames' input JSON is kept (the engine cache, so recorded command lines run again)."""
    return settings.cache_root() / "perf_analyzer" / f"phantom-{height}x{width}-n{count}-seed{seed}.json"


def _client(url: str, protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError:
        raise BenchError("measuring a server needs Triton's Python client: pip install 'ht-engine[serve]'") from None
    if protocol == "grpc":
        return module.InferenceServerClient(url)
    return module.InferenceServerClient(url, connection_timeout=STATUS_TIMEOUT_S, network_timeout=STATUS_TIMEOUT_S)


def _client_errors() -> tuple:
    from tritonclient.utils import InferenceServerException

    return (OSError, InferenceServerException)


def _model_config(client, protocol: str, model: str) -> dict:
    if protocol == "grpc":
        return client.get_model_config(model, as_json=True, client_timeout=STATUS_TIMEOUT_S)["config"]
    return client.get_model_config(model)


def server_ready(url: str, protocol: str, model: str = MODEL_NAME) -> bool:
    """Whether the server at `url` is ready and serves `model` (False when it cannot be reached)."""
    with contextlib.closing(_client(url, protocol)) as client:
        try:
            if protocol == "grpc":
                return client.is_server_ready(client_timeout=STATUS_TIMEOUT_S) and client.is_model_ready(
                    model, client_timeout=STATUS_TIMEOUT_S)
            return client.is_server_ready() and client.is_model_ready(model)
        except _client_errors():
            return False


def server_status(url: str, protocol: str, model: str = MODEL_NAME) -> dict:
    """What the server at `url` says about itself and `model` (its Triton version, batching, instances, input dims,
    parameters); a `BenchError` when it cannot be reached or does not serve `model` ready."""
    if not server_ready(url, protocol, model):
        raise BenchError(f"no Triton Inference Server at {url} ({protocol}) serves model {model} ready: start one "
                         f"with `ht-engine serve ARTIFACT` and pass its {protocol} HOST:PORT (it prints them), with "
                         f"--protocol matching the port")
    with contextlib.closing(_client(url, protocol)) as client:
        try:
            metadata = (client.get_server_metadata(as_json=True, client_timeout=STATUS_TIMEOUT_S)
                        if protocol == "grpc" else client.get_server_metadata())
            config = _model_config(client, protocol, model)
        except _client_errors() as exc:
            raise BenchError(f"the server at {url} ({protocol}) did not describe model {model}: {exc}") from None
    batcher = config.get("dynamic_batching")
    inputs = [item for item in config.get("input", []) if item.get("name") == INPUT_NAME]
    return {
        "url": url, "protocol": protocol, "triton_version": metadata.get("version"),
        "model": {
            "name": model,
            "max_batch_size": int(config.get("max_batch_size", 0)),
            "input_dims": [int(dim) for dim in inputs[0]["dims"]] if inputs else None,
            "dynamic_batching": None if batcher is None else {
                "max_queue_delay_us": int(batcher.get("max_queue_delay_microseconds", 0))},
            "instances": sum(int(group.get("count", 1)) for group in config.get("instance_group", [])),
            "parameters": {key: value.get("string_value") for key, value in config.get("parameters", {}).items()
                           if key != "engine_root"},
        },
    }


def check_frames_fit(status: dict, frame_shape: tuple) -> None:
    """A `BenchError` unless the served model takes frames of `frame_shape` (`[H,W]` or `[H,W,3]`)."""
    dims = status["model"]["input_dims"]
    if dims is None:
        raise BenchError(f"model {status['model']['name']} at {status['url']} has no input {INPUT_NAME!r}: it is "
                         f"not a model `ht-engine serve` serves")
    fits = len(dims) == len(frame_shape) and all(dim in (-1, side) for dim, side in zip(dims, frame_shape))
    if not fits:
        wanted = "x".join("any" if dim == -1 else str(dim) for dim in dims)
        raise BenchError(f"model {status['model']['name']} at {status['url']} takes frames of {wanted} (dims "
                         f"{dims}), not {'x'.join(map(str, frame_shape))}: pass a --frame-size it takes")


@dataclass(frozen=True)
class LoadPlan:
    """What to send: to `url` (HOST:PORT of the server's HTTP or gRPC endpoint, as `protocol` says), `requests`
    one-frame requests at each concurrency level, after `warmup_requests` untimed ones at the highest level; each
    perf_analyzer run is stopped after `timeout_s`."""

    url: str
    protocol: str = "http"
    concurrencies: tuple = (1, 4, 16)
    requests: int = 128
    warmup_requests: int = 16
    timeout_s: float = 600.0
    model: str = MODEL_NAME

    def validate(self) -> None:
        if "://" in self.url or ":" not in self.url:
            raise BenchError(f"the server address must be HOST:PORT without a scheme (e.g. 127.0.0.1:8000, as "
                             f"`ht-engine serve` prints it), got {self.url!r}")
        if self.protocol not in PROTOCOLS:
            raise BenchError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if not self.concurrencies or not all(1 <= c <= MAX_CONCURRENCY for c in self.concurrencies):
            raise BenchError(f"concurrency levels must be in 1..{MAX_CONCURRENCY}, got {list(self.concurrencies)}")
        if self.requests < max(self.concurrencies):
            raise BenchError(f"{self.requests} requests per level cannot keep {max(self.concurrencies)} in flight: "
                             f"send at least as many requests as the highest concurrency")
        if self.warmup_requests < 0:
            raise BenchError(f"warm-up requests must be >= 0, got {self.warmup_requests}")
        if not self.timeout_s > 0:
            raise BenchError(f"the timeout must be positive, got {self.timeout_s}")

    def arguments(self, concurrency: int, requests: int, input_data: Path, csv_path: Path | str) -> list:
        """perf_analyzer's arguments for one bounded run: `requests` requests at `concurrency`, then it stops."""
        return ["-m", self.model, "-u", self.url, "-i", self.protocol,
                "--concurrency-range", f"{concurrency}:{concurrency}", "--request-count", str(requests),
                "--input-data", str(input_data), "-f", str(csv_path), "--verbose-csv"]


@dataclass
class PerfRun:
    """The outcome of `measure`: one `PerfLevel` per concurrency, and how it was measured."""

    plan: LoadPlan
    analyzer: PerfAnalyzer
    frame_shape: tuple
    input_data: Path
    server: dict
    levels: list = field(default_factory=list)
    commands: list = field(default_factory=list)  # the command line of each level, as it can be rerun
    warmup_command: str | None = None

    def to_dict(self) -> dict:
        return {
            "perf_analyzer": {"version": self.analyzer.version, "binary": str(self.analyzer.binary),
                              "library_dir": None if self.analyzer.library_dir is None
                              else str(self.analyzer.library_dir)},
            "plan": {**asdict(self.plan), "concurrencies": list(self.plan.concurrencies)},
            "frames": {"shape": list(self.frame_shape), "dtype": "uint8", "source": "engine.phantom",
                       "input_data": str(self.input_data)},
            "server": self.server,
            "warmup_command": self.warmup_command,
            "commands": list(self.commands),
            "levels": [level.to_dict() for level in self.levels],
        }


def measure(plan: LoadPlan, frames: np.ndarray, input_data: Path, analyzer: PerfAnalyzer | None = None,
            progress: Callable[[str], None] | None = None) -> PerfRun:
    """Write `frames` as perf_analyzer's input at `input_data`, check the server serves the model ready and takes
    such frames, warm it up, then run perf_analyzer once per concurrency level of `plan` (bounded: a fixed request
    count, a hard timeout) and read its CSV. The server must still be ready after every level."""
    plan.validate()
    analyzer = PerfAnalyzer.load() if analyzer is None else analyzer
    report = progress or (lambda message: None)
    frames = np.asarray(frames)
    status = server_status(plan.url, plan.protocol, plan.model)
    check_frames_fit(status, frames.shape[1:])
    write_input_data(input_data, frames)
    run = PerfRun(plan, analyzer, tuple(frames.shape[1:]), input_data, status)
    top = max(plan.concurrencies)
    with tempfile.TemporaryDirectory(prefix="ht-perf-") as scratch:
        if plan.warmup_requests:
            warmup = plan.arguments(top, plan.warmup_requests, input_data, Path(scratch) / "warmup.csv")
            report(f"warm-up: {plan.warmup_requests} requests at concurrency {top}")
            analyzer.run(warmup, plan.timeout_s, f"the warm-up ({plan.warmup_requests} requests at concurrency {top})")
            run.warmup_command = analyzer.command_line(
                plan.arguments(top, plan.warmup_requests, input_data, "warmup.csv"))
        for concurrency in plan.concurrencies:
            csv_path = Path(scratch) / f"perf-c{concurrency}.csv"
            arguments = plan.arguments(concurrency, plan.requests, input_data, csv_path)
            report(f"concurrency {concurrency}: {plan.requests} requests")
            analyzer.run(arguments, plan.timeout_s, f"{plan.requests} requests at concurrency {concurrency}")
            try:
                text = csv_path.read_text()
            except OSError as exc:
                raise BenchError(f"perf_analyzer wrote no CSV at {csv_path} ({exc.strerror or exc})") from None
            levels = parse_csv(text)
            if [level.concurrency for level in levels] != [concurrency]:
                raise BenchError(f"perf_analyzer's CSV holds concurrency levels {[lv.concurrency for lv in levels]}, "
                                 f"expected [{concurrency}]")
            run.levels.extend(levels)
            run.commands.append(analyzer.command_line(
                plan.arguments(concurrency, plan.requests, input_data, csv_path.name)))
            if not server_ready(plan.url, plan.protocol, plan.model):
                raise BenchError(f"the server at {plan.url} stopped being ready after {plan.requests} requests at "
                                 f"concurrency {concurrency}: look at its log")
    return run
