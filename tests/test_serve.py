"""`ht-engine serve`: a real Triton Inference Server on loopback, driven with tritonclient over HTTP and gRPC.

Every answer is compared with `Predictor.predict` on the same frames; bad requests must come back as errors while
the server stays ready; SIGTERM with requests in flight must leave each with its answer or a clean error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InputError, ServeError
from tests.helpers import seeded_frame, tiny_seg_package

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("tritonclient.http", reason="tritonclient[http] (the [serve] extra) not installed")
pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (the [serve] extra) not installed")


def _server_installed() -> bool:
    from engine.serve.server import ServerFiles

    try:
        ServerFiles.find()
    except ServeError:
        return False
    return True


needs_server = pytest.mark.skipif(not _server_installed(), reason="Triton Inference Server binaries not installed "
                                  "(pip install --no-deps nvidia-pytriton; make does)")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny seg package (any frame size) and a frame ONNX artifact of it (frames of 96x128 only)."""
    from engine.cli import main

    root = tmp_path_factory.mktemp("serve")
    package = tiny_seg_package(root / "seg.htpkg")
    artifact = root / "frames-onnx"
    assert main(["build", str(package), "--backend", "onnx", "--batch", "1,4,8", "--frame-size", "96x128",
                 "--out", str(artifact)]) == 0
    return {"package": package, "artifact": artifact}


def _frames(count: int, shape=(96, 128), seed: int = 0) -> np.ndarray:
    return np.stack([seeded_frame(shape, False, seed + k) for k in range(count)])


def _expected(source, frames: np.ndarray) -> np.ndarray:
    from engine import Predictor

    return np.stack([r.mask for r in Predictor.load(source).predict(list(frames))])


def _infer(module, url: str, frames: np.ndarray, output: str = "mask"):
    client = module.InferenceServerClient(url)
    tensor = module.InferInput("frames", list(frames.shape), "UINT8")
    tensor.set_data_from_numpy(frames)
    return client.infer("ht", [tensor]).as_numpy(output)


def _start(source, **options):
    from engine.serve import Batching, Ports, TritonServer, describe

    batching = Batching(**options)
    return TritonServer(describe(source), batching, ports=Ports(0, 0, 0)).start()


@pytest.fixture(scope="module")
def package_server(models):
    server = _start(models["package"], max_batch=8, max_queue_delay_us=2000)
    yield server
    server.stop()


# -- the model logic, without a server -----------------------------------------------------------------------------


class _FakePredictor:
    """Masks = frame > 127; raises on frames whose first pixel is 7 (a request the model cannot take)."""

    task = "seg"

    def __init__(self):
        self.calls = []

    def predict(self, frames, batch_size=8):
        from engine.postprocess import FrameResult

        self.calls.append(len(frames))
        if any(frame.flat[0] == 7 for frame in frames):
            raise InputError("frame with a 7")
        return [FrameResult(k, *f.shape[:2], mask=(f > 127).astype(np.uint8)) for k, f in enumerate(frames)]


def test_frame_batcher_answers_each_request_and_isolates_the_bad_ones():
    from engine.serve.backend_model import FrameBatcher

    rng = np.random.default_rng(4)
    good = [rng.integers(8, 256, (n, 5, 6), dtype=np.uint8) for n in (1, 3, 2)]
    other_size = rng.integers(8, 256, (2, 4, 4), dtype=np.uint8)
    poisoned = good[0].copy()
    poisoned[0, 0, 0] = 7
    requests = [good[0], np.zeros((0, 5, 6), np.uint8), good[1], poisoned, other_size, np.zeros((1, 5, 6, 3), np.uint8),
                good[2], np.zeros((1, 5, 0), np.uint8), good[0].astype(np.float32)]
    predictor = _FakePredictor()
    outcomes = FrameBatcher(predictor, channels=1, max_batch=8).run(requests)
    for index in (0, 2, 4, 6):
        np.testing.assert_array_equal(outcomes[index], requests[index] > 127)
        assert outcomes[index].dtype == np.uint8
    assert "holds no frames" in str(outcomes[1])
    assert "frame with a 7" in str(outcomes[3])
    assert "[n,H,W] frames" in str(outcomes[5])
    assert "empty frame" in str(outcomes[7])
    assert "uint8" in str(outcomes[8])
    # Requests of one geometry ran as one call (1 + 3 + 1 + 2 frames); after its failure each ran alone.
    assert predictor.calls[0] == 7 and sorted(predictor.calls[1:]) == [1, 1, 2, 2, 3]


def test_describe_reads_the_model_and_refuses_what_it_cannot_serve(models, tmp_path):
    from engine.serve import describe

    package = describe(models["package"])
    assert (package.task, package.classes, package.channels, package.frame) == ("seg", ("background", "lesion"),
                                                                                1, None)
    assert package.input_spec()["shape"] == [-1, -1, -1] and package.output_spec()["name"] == "mask"
    assert describe(models["package"], 3).input_spec()["shape"] == [-1, -1, -1, 3]
    artifact = describe(models["artifact"])
    assert artifact.input_spec()["shape"] == [-1, 96, 128] and artifact.output_spec()["shape"] == [-1, 96, 128]
    with pytest.raises(ServeError, match="built for 1-channel frames"):
        describe(models["artifact"], 3)
    with pytest.raises(ServeError, match="does not exist"):
        describe(tmp_path / "missing.htpkg")
    with pytest.raises(ServeError, match="--channels must be 1"):
        describe(models["package"], 2)


def test_served_config_describes_the_model_as_export_triton_does(models, tmp_path):
    """One frame artifact, two descriptions: the served config and the exported repository agree on the tensors
    (names, types, dims), the batch size and dynamic batching."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from engine.artifacts import open_artifact
    from engine.export.triton_repository import export_triton
    from engine.serve import Batching, config_pbtxt, describe

    exported = export_triton(open_artifact(models["artifact"]), tmp_path / "repo", "ht", kind="cpu")
    fleet = text_format.Parse((exported / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    text = config_pbtxt(describe(models["artifact"]), Batching(max_batch=8), {"backend": None, "device": "cpu",
                                                                              "precision": "fp32"}, REPO)
    served = text_format.Parse(text, model_config_pb2.ModelConfig())

    def tensors(config):
        return ([(t.name, t.data_type, list(t.dims)) for t in config.input],
                [(t.name, t.data_type, list(t.dims)) for t in config.output])

    assert tensors(served) == tensors(fleet) == ([("frames", model_config_pb2.TYPE_UINT8, [96, 128])],
                                                 [("mask", model_config_pb2.TYPE_UINT8, [96, 128])])
    assert served.max_batch_size == fleet.max_batch_size == 8
    assert served.HasField("dynamic_batching") and fleet.HasField("dynamic_batching")
    assert served.backend == "python" and fleet.platform == "onnxruntime_onnx"
    parameters = {key: value.string_value for key, value in served.parameters.items()}
    assert json.loads(parameters["classes"]) == ["background", "lesion"] and parameters["task"] == "seg"
    unbatched = text_format.Parse(config_pbtxt(describe(models["package"]), Batching(4, None), {}, REPO),
                                  model_config_pb2.ModelConfig())
    assert not unbatched.HasField("dynamic_batching") and unbatched.max_batch_size == 4


def test_server_environment_puts_this_interpreter_first(monkeypatch):
    from engine.serve.server import ServerFiles, interpreter_library_dir, server_environment

    files = ServerFiles(Path("/x/tritonserver"), Path("/x/libs"), Path("/x/python"), Path("/x/stub"))
    env = server_environment(files, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"})
    libraries = env["LD_LIBRARY_PATH"].split(os.pathsep)
    own = interpreter_library_dir()
    assert libraries[-2:] == ["/x/libs", "/opt/lib"]
    assert libraries[0] == (str(own) if own is not None else "/x/libs")
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_missing_server_binaries_and_taken_ports_are_clear_errors(monkeypatch, models):
    import socket

    import engine.serve.server as server_module
    from engine.serve import Ports, TritonServer, describe

    monkeypatch.setattr(server_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ServeError, match="pip install --no-deps nvidia-pytriton"):
        server_module.ServerFiles.find()
    monkeypatch.undo()
    if not _server_installed():
        pytest.skip("Triton Inference Server binaries not installed")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = TritonServer(describe(models["package"]), ports=Ports(0, port, 0))
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}.*--grpc-port"):
            server.start()
    assert server.workspace is None and server.process is None


# -- a real server --------------------------------------------------------------------------------------------------


@needs_server
def test_http_and_grpc_answers_equal_predict_at_any_frame_size(package_server, models):
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    for shape, count in (((96, 128), 3), ((61, 87), 1), ((240, 320), 2)):
        frames = _frames(count, shape, seed=shape[0])
        expected = _expected(models["package"], frames)
        for module, url in ((http, package_server.http_url), (grpc, package_server.grpc_url)):
            np.testing.assert_array_equal(_infer(module, url, frames), expected)
    config = http.InferenceServerClient(package_server.http_url).get_model_config("ht")
    parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
    from engine.package import read_package
    from engine.version import __version__

    assert parameters["package_sha256"] == read_package(models["package"])[2]
    assert parameters["engine_version"] == __version__
    assert json.loads(parameters["classes"]) == ["background", "lesion"]
    assert "dynamic_batching" in config


@needs_server
def test_200_concurrent_requests_get_200_right_answers(package_server, models):
    """Each request carries its own frame; every answer must be that frame's mask: nothing lost, nothing swapped."""
    import tritonclient.grpc as grpc

    frames = _frames(200, (48, 64), seed=100)
    expected = _expected(models["package"], frames)
    client = grpc.InferenceServerClient(package_server.grpc_url)
    answers, done = {}, threading.Semaphore(0)

    def callback(index, result, error):
        answers[index] = error if error is not None else result.as_numpy("mask")
        done.release()

    for index in range(200):
        tensor = grpc.InferInput("frames", [1, 48, 64], "UINT8")
        tensor.set_data_from_numpy(frames[index:index + 1])
        client.async_infer("ht", [tensor], lambda result, error, index=index: callback(index, result, error),
                           request_id=str(index))
    for _ in range(200):
        assert done.acquire(timeout=120)
    assert sorted(answers) == list(range(200))
    for index in range(200):
        assert not isinstance(answers[index], Exception), answers[index]
        np.testing.assert_array_equal(answers[index][0], expected[index])
    statistics = client.get_inference_statistics("ht", as_json=True)["model_stats"][0]
    assert int(statistics["inference_count"]) >= 200
    # The model logged nothing on the way (a traceback per response is what a mishandled DLPack capsule leaves).
    assert "Traceback" not in package_server.log_path.read_text(errors="replace")


@needs_server
def test_bad_requests_get_errors_and_the_server_stays_ready(package_server):
    import tritonclient.grpc as grpc
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    bad = [(np.zeros((1, 8, 8), np.float32), "FP32", "data-type"),
           (np.zeros((1, 8, 8, 3), np.uint8), "UINT8", "unexpected shape"),
           (np.zeros((1, 0, 8), np.uint8), "UINT8", "empty frame"),
           (np.zeros((0, 8, 8), np.uint8), "UINT8", "byte size mismatch")]
    for module, url in ((http, package_server.http_url), (grpc, package_server.grpc_url)):
        client = module.InferenceServerClient(url)
        for array, dtype, message in bad:
            tensor = module.InferInput("frames", list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            with pytest.raises(InferenceServerException, match=message):
                client.infer("ht", [tensor])
            assert client.is_server_ready() and client.is_model_ready("ht")
        frames = _frames(1, (40, 56), seed=9)
        assert _infer(module, url, frames).shape == (1, 40, 56)


@needs_server
def test_frame_artifact_served_with_and_without_dynamic_batching(models):
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    frames = _frames(4, seed=50)
    expected = _expected(models["artifact"], frames)
    for delay in (500, None):
        server = _start(models["artifact"], max_batch=8, max_queue_delay_us=delay)
        try:
            np.testing.assert_array_equal(_infer(http, server.http_url, frames), expected)
            np.testing.assert_array_equal(_infer(grpc, server.grpc_url, frames[1:3]), expected[1:3])
            config = http.InferenceServerClient(server.http_url).get_model_config("ht")
            assert ("dynamic_batching" in config) == (delay is not None)
        finally:
            server.stop()
        assert server.workspace is None and server.process.poll() is not None


@needs_server
def test_the_optimized_backend_serves_with_torch_compile(models):
    """Each instance starts in the C locale: torch.compile's generated files must still be read as UTF-8."""
    import tritonclient.http as http

    from engine import Predictor
    from engine.serve import Batching, Ports, TritonServer, describe

    frames = _frames(2, (72, 88), seed=70)
    expected = np.stack([r.mask for r in Predictor.load(models["package"], backend="optimized").predict(list(frames))])
    runtime = {"backend": "optimized", "device": "cpu", "precision": "fp32"}
    with TritonServer(describe(models["package"]), Batching(), runtime, ports=Ports(0, 0, 0)) as server:
        client = http.InferenceServerClient(server.http_url, network_timeout=300, connection_timeout=300)
        tensor = http.InferInput("frames", list(frames.shape), "UINT8")
        tensor.set_data_from_numpy(frames)
        np.testing.assert_array_equal(client.infer("ht", [tensor], timeout=300).as_numpy("mask"), expected)
        assert "Traceback" not in server.log_path.read_text(errors="replace")


def _children(pid: int) -> list:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _serve_process(workspace: Path, source, *options):
    """`ht-engine serve` in a child process, its workspace under `workspace` (a kill -9 leaves it behind)."""
    process = subprocess.Popen([sys.executable, "-m", "engine", "serve", str(source), "--http-port", "0",
                                "--grpc-port", "0", "--metrics-port", "0", *options], cwd=REPO,
                               env={**os.environ, "TMPDIR": str(workspace)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line.startswith("serving model ht"), (line, process.stderr.read() if process.poll() is not None else "")
    http_url = line.split("http ", 1)[1].split(",")[0]
    grpc_url = line.split("grpc ", 1)[1].split(",")[0]
    metrics_url = line.split("metrics ", 1)[1].split(" ")[0]
    return process, http_url, grpc_url, metrics_url


@needs_server
def test_sigterm_drains_in_flight_requests_then_stops(models, tmp_path):
    """`ht-engine serve` as users run it: metrics and health answer; SIGTERM while requests are in flight leaves
    each with its right answer or a clean error, the server process gone and exit status 0."""
    import urllib.request

    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    process, http_url, grpc_url, _ = _serve_process(tmp_path, models["package"], "--max-batch", "2")
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
        frames = _frames(40, (480, 640), seed=300)
        expected = _expected(models["package"], frames)
        children = _children(process.pid)
        assert children, "the server is a child of ht-engine serve"
        first = threading.Event()

        def one(index):
            try:
                mask = _infer(grpc, grpc_url, frames[index:index + 1])
            except InferenceServerException as exc:
                return exc
            first.set()
            return mask, time.monotonic()

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(one, index) for index in range(40)]
            assert first.wait(60)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            outcomes = [future.result(timeout=120) for future in futures]
        assert process.wait(60) == 0
        answered = [k for k, outcome in enumerate(outcomes) if not isinstance(outcome, Exception)]
        assert any(outcomes[k][1] > signalled for k in answered), "the requests in flight at SIGTERM finish"
        for index in answered:
            np.testing.assert_array_equal(outcomes[index][0][0], expected[index])
        for outcome in outcomes:  # the others were refused with a status, never dropped silently
            if isinstance(outcome, Exception):
                assert outcome.status() in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"), outcome
        deadline = time.monotonic() + 10
        while any(_alive(child) for child in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(child) for child in children)
        assert "draining" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@needs_server
def test_metrics_endpoint_and_the_server_dies_with_its_parent(models, tmp_path):
    import urllib.request

    process, _, _, metrics_url = _serve_process(tmp_path, models["package"])
    children = _children(process.pid)
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            assert "nv_inference_request_success" in response.read().decode()
        process.kill()
        process.wait()
        deadline = time.monotonic() + 15
        while any(_alive(child) for child in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert children and not any(_alive(child) for child in children)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
