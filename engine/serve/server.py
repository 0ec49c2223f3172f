"""A real Triton Inference Server serving the model, as a child process of `ht-engine serve`.

The server binaries come from the `nvidia-pytriton` wheel (`tritonserver`, the Python backend, one backend stub per
Python version); nothing of PyTriton's Python API is imported (it pins numpy<2). Two traps of that layout are handled
here rather than left to the user:

- the stub links `libpython3.X.so` by name, and the loader finds the system's copy first, which need not be the
  release of the running interpreter's standard library (seen here: model start-up failing with `'_thread.RLock'
  object has no attribute '_recursion_count'`). The running interpreter's own `LIBDIR` goes first on the server's
  `LD_LIBRARY_PATH`.
- the stub finds the interpreter's environment (site-packages) through `PATH`; the running interpreter's `bin`
  goes first on it.

The server lives as long as this process: it is told to die with its parent (`PR_SET_PDEATHSIG`), SIGINT/SIGTERM
make it drain (Triton finishes in-flight requests, up to `exit_timeout_s`, refusing new ones) and stop, and its
workspace (model repository, backend copy, log) is removed after it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ServeError
from .repository import MODEL_NAME, Batching, ServedModel, write_repository

ENGINE_ROOT = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1
PYTRITON_LIBRARIES = "nvidia_pytriton.libs"  # beside the package: the wheel's shared libraries (names hashed)
INSTALL_HINT = ("install the server binaries with `pip install --no-deps nvidia-pytriton` (make does; "
                "docs/serving.md)")


def pytriton_package() -> Path | None:
    """The installed `pytriton` package directory (nvidia-pytriton: the server binaries; its shared libraries lie
    beside it, `PYTRITON_LIBRARIES`), or None when it is not installed. Nothing of it is imported."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class ServerFiles:
    """Where the installed server lives: the binary, its shared libraries, the Python backend and its stubs."""

    tritonserver: Path
    libraries: Path
    python_backend: Path
    stub: Path

    @classmethod
    def find(cls) -> "ServerFiles":
        package = pytriton_package()
        if package is None:
            raise ServeError(f"Triton Inference Server is not installed: {INSTALL_HINT}")
        root = package / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        files = cls(root / "bin" / "tritonserver", package.parent / PYTRITON_LIBRARIES,
                    root / "backends" / "python", root / "python_backend_stubs" / version / "triton_python_backend_stub")
        for path in (files.tritonserver, files.python_backend / "libtriton_python.so", files.stub):
            if not path.is_file():
                raise ServeError(f"{path} is missing from the installed nvidia-pytriton (a Python {version} backend "
                                 f"stub is needed to serve from this interpreter): {INSTALL_HINT}")
        return files


def interpreter_library_dir() -> Path | None:
    """The directory of the running interpreter's own `libpython`, when it was built as a shared library."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and name and (Path(libdir) / name).is_file():
        return Path(libdir)
    return None


def server_environment(files: ServerFiles, base: dict | None = None) -> dict:
    """The environment the server (and through it each backend stub) runs in: this interpreter's `libpython`
    and `bin` first, the server's own libraries after."""
    env = dict(os.environ if base is None else base)
    libraries = [str(files.libraries)] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])
    own = interpreter_library_dir()
    if own is not None:
        libraries.insert(0, str(own))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def check_port(address: str, port: int, option: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError as exc:
            raise ServeError(f"cannot listen on {address}:{port} ({exc.strerror or exc}): another server holds it; "
                             f"pass another {option} (0 picks a free port)") from None


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


@dataclass
class TritonServer:
    """`with TritonServer(model, ...) as server:` starts the server and waits until model `ht` is ready; leaving
    the block drains and stops it. `runtime` is how each instance loads the model ({"backend", "device",
    "precision"})."""

    model: ServedModel
    batching: Batching = field(default_factory=Batching)
    runtime: dict = field(default_factory=lambda: {"backend": None, "device": "cpu", "precision": "fp32"})
    address: str = "127.0.0.1"
    ports: Ports = field(default_factory=Ports)
    exit_timeout_s: int = 30
    ready_timeout_s: float = 600.0
    process: subprocess.Popen | None = None
    workspace: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{self.address}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.ports.metrics}/metrics"

    @property
    def log_path(self) -> Path | None:
        return None if self.workspace is None else self.workspace / "server.log"

    def _claim_ports(self) -> None:
        named = {"http": "--http-port", "grpc": "--grpc-port", "metrics": "--metrics-port"}
        chosen = {}
        for name, option in named.items():
            port = getattr(self.ports, name)
            if port == 0:
                port = free_port(self.address)
            else:
                check_port(self.address, port, option)
            if port in chosen.values():
                raise ServeError(f"{option} {port} is already used by another endpoint of this server")
            chosen[name] = port
        self.ports = Ports(**chosen)

    def _command(self, files: ServerFiles, repository: Path, backends: Path) -> list:
        return [str(files.tritonserver), f"--model-repository={repository}", f"--backend-directory={backends}",
                f"--http-address={self.address}", f"--http-port={self.ports.http}",
                f"--grpc-address={self.address}", f"--grpc-port={self.ports.grpc}",
                f"--metrics-address={self.address}", f"--metrics-port={self.ports.metrics}",
                "--allow-metrics=true", "--allow-gpu-metrics=false", "--strict-readiness=true",
                f"--exit-timeout-secs={self.exit_timeout_s}", "--disable-auto-complete-config",
                "--model-control-mode=none", "--exit-on-error=true"]

    def start(self, cancel=None) -> "TritonServer":
        """Start the server and wait until the model is ready; `cancel` (a `threading.Event`) ends the wait early
        (the caller then stops the server)."""
        files = ServerFiles.find()
        self.batching.validate()
        self._claim_ports()
        self.workspace = Path(tempfile.mkdtemp(prefix="ht-serve-"))
        try:
            repository = write_repository(self.workspace, self.model, self.batching, self.runtime, ENGINE_ROOT)
            backends = self.workspace / "backends"
            python = backends / "python"
            python.mkdir(parents=True)
            for item in files.python_backend.iterdir():
                if item.is_file():
                    shutil.copy2(item, python / item.name)
            shutil.copy2(files.stub, python / files.stub.name)
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(self._command(files, repository, backends),
                                                env=server_environment(files), stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            self._wait_ready(cancel)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 25) -> str:
        """The server log's errors (Triton's `E…` lines and Python tracebacks), then its last lines outside the
        option tables it prints on the way down."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except (OSError, AttributeError):
            return "(no server log)"
        errors, in_traceback = [], False
        for line in text:
            in_traceback = line.startswith("Traceback") or (in_traceback and line[:1] in (" ", "\t"))
            if in_traceback or line.startswith("Traceback") or (line[:1] == "E" and line[1:5].isdigit()) or \
                    line.split(":")[0].endswith(("Error", "Exception")):
                errors.append(line)
        rest = [line for line in text if not line.startswith(("+", "|")) and line not in errors]
        return "\n".join(errors[-lines:] + rest[-max(5, lines - len(errors)):])

    def _ready(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self, cancel) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                return
            code = self.process.poll()
            if code is not None:
                raise ServeError(f"Triton Inference Server exited with code {code} before model {MODEL_NAME} was "
                                 f"ready; the end of its log:\n{self.log_tail()}")
            if self._ready(f"/v2/models/{MODEL_NAME}/ready") and self._ready("/v2/health/ready"):
                return
            time.sleep(0.2)
        raise ServeError(f"model {MODEL_NAME} was not ready after {self.ready_timeout_s:.0f} s; the end of the "
                         f"server log:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the server exits (its exit code) or `timeout` passes (None)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        """Drain and stop: SIGTERM (Triton finishes in-flight requests, refusing new ones), a kill if it outlives
        its exit timeout; then the workspace goes. Returns the server's exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(self.exit_timeout_s + 15)
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
