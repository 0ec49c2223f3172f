"""engine.serve.perf (perf_analyzer against a running server) and `ht-engine bench --serve`: the CSV it writes, the
input JSON it reads, where its binary is found, when its missing libraries are linked in, and a real small run
against a real Triton Inference Server."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import BenchError
from engine.phantom import phantom_cine
from engine.serve import perf
from engine.serve.perf import LoadPlan, PerfAnalyzer, PerfLevel

from .helpers import tiny_seg_package

# Written by perf_analyzer 2.51.0 (`-f FILE --verbose-csv`, concurrency 4, 200 requests of a 120x160 phantom frame)
# against `ht-engine serve` with tests/helpers.py's tiny seg package, on a 2-core CPU. Times in microseconds.
REAL_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
    "Avg latency,request/response,response wait\n"
    "4,199.862,65,341,805,48,4159,411,20,5527,7405,9390,10772,5853,85,5748\n"
)
# What the dynamic loader prints when perf_analyzer's libraries are missing (seen on this machine).
LOADER_ERROR = ("/venv/opt/perf_analyzer/bin/perf_analyzer: error while loading shared libraries: libb64.so.0d: "
                "cannot open shared object file: No such file or directory\n")


def test_parse_csv_of_a_real_run_in_milliseconds():
    (level,) = perf.parse_csv(REAL_CSV)
    assert level.concurrency == 4
    # 4 clients, each waiting 5.853 ms on average: 4 / 0.005853 s.
    assert level.throughput_infer_s == pytest.approx(683.410217, rel=1e-6)
    assert level.reported_infer_s == pytest.approx(199.862)
    assert (level.avg_ms, level.p50_ms, level.p90_ms, level.p95_ms, level.p99_ms) == pytest.approx(
        (5.853, 5.527, 7.405, 9.390, 10.772))
    assert (level.client_send_ms, level.network_ms, level.client_recv_ms) == pytest.approx((0.065, 0.341, 0.020))
    assert (level.queue_ms, level.compute_input_ms, level.compute_infer_ms, level.compute_output_ms) == pytest.approx(
        (0.805, 0.048, 4.159, 0.411))
    assert level.compute_ms == pytest.approx(4.618)
    parts = (level.client_send_ms + level.network_ms + level.queue_ms + level.compute_ms + level.client_recv_ms)
    assert parts == pytest.approx(level.avg_ms, rel=0.01), "the split adds up to the mean latency"
    assert level.to_dict()["compute_ms"] == pytest.approx(4.618)


def test_parse_csv_names_missing_columns_and_bad_values():
    without_mean = REAL_CSV.replace(",Avg latency", "").replace(",5853,85", ",85")
    with pytest.raises(BenchError, match="lacks the columns Avg latency"):
        perf.parse_csv(without_mean)
    with pytest.raises(BenchError, match="'n/a' in column 'p99 latency'"):
        perf.parse_csv(REAL_CSV.replace("10772", "n/a"))
    with pytest.raises(BenchError, match="no measurement"):
        perf.parse_csv(REAL_CSV.splitlines()[0] + "\n")
    with pytest.raises(BenchError, match="no completed requests"):
        perf.parse_csv(REAL_CSV.replace(",5853,", ",0,"))


@pytest.mark.parametrize("rgb", [False, True])
def test_input_data_round_trips_the_frames(tmp_path, rgb):
    frames = phantom_cine(frames=3, height=37, width=53, seed=5).frames
    if rgb:
        frames = np.stack([frames, 255 - frames, frames // 2], axis=-1)
    path = perf.write_input_data(tmp_path / "in.json", frames)
    steps = json.loads(path.read_text())["data"]
    assert len(steps) == len(frames)
    decoded = []
    for step in steps:
        tensor = step["frames"]
        assert tensor["shape"] == list(frames.shape[1:]), "one frame per request: no batch dimension"
        decoded.append(np.frombuffer(base64.b64decode(tensor["b64"]), np.uint8).reshape(tensor["shape"]))
    np.testing.assert_array_equal(np.stack(decoded), frames)


def test_input_data_refuses_what_the_model_does_not_take(tmp_path):
    with pytest.raises(BenchError, match="uint8"):
        perf.write_input_data(tmp_path / "in.json", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(BenchError, match="n >= 1"):
        perf.write_input_data(tmp_path / "in.json", np.zeros((0, 8, 8), np.uint8))
    assert not (tmp_path / "in.json").exists()


def test_phantom_frames_are_the_seeded_cine():
    frames = perf.phantom_frames(40, 56, count=3, seed=2)
    assert frames.dtype == np.uint8 and frames.shape == (3, 40, 56)
    np.testing.assert_array_equal(frames, phantom_cine(frames=3, height=40, width=56, seed=2).frames)


def _executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_find_prefers_the_setting_then_path_then_the_environment(tmp_path, monkeypatch):
    configured = _executable(tmp_path / "mine" / "perf_analyzer", "exit 0\n")
    on_path = _executable(tmp_path / "bin" / "perf_analyzer", "exit 0\n")
    bundled = _executable(tmp_path / "venv" / "opt" / "perf_analyzer" / "bin" / "perf_analyzer", "exit 0\n")
    monkeypatch.setenv("HT_PERF_ANALYZER", str(configured))
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert perf.find_perf_analyzer(tmp_path / "venv") == configured
    monkeypatch.delenv("HT_PERF_ANALYZER")
    assert perf.find_perf_analyzer(tmp_path / "venv") == on_path
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert perf.find_perf_analyzer(tmp_path / "venv") == bundled


def test_find_says_how_to_install_when_absent(tmp_path, monkeypatch):
    monkeypatch.delenv("HT_PERF_ANALYZER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BenchError) as raised:
        perf.find_perf_analyzer(tmp_path / "venv")
    message = str(raised.value)
    assert "not installed" in message and str(tmp_path / "venv" / "opt" / "perf_analyzer") in message
    assert "pip install --no-deps --target" in message and "tritonclient==2.51.0" in message
    assert "HT_PERF_ANALYZER" in message


def test_a_setting_that_names_no_binary_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    _executable(tmp_path / "bin" / "perf_analyzer", "exit 0\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("HT_PERF_ANALYZER", str(tmp_path / "nothing-here"))
    with pytest.raises(BenchError, match="HT_PERF_ANALYZER=.*nothing-here is not an executable file"):
        perf.find_perf_analyzer(tmp_path / "venv")


def test_missing_library_reads_the_loader_error():
    assert perf.missing_library(LOADER_ERROR) == "libb64.so.0d"
    assert perf.missing_library("error: failed to get model metadata: Couldn't connect to server") is None


def test_bundled_copy_finds_auditwheel_names(tmp_path):
    for name in ("libb64-98cb6333.so.0d", "libcudart-09529672.so.12.6.77", "libcurl-75a2bf80.so.4.7.0"):
        (tmp_path / name).write_bytes(b"")
    assert perf.bundled_copy("libb64.so.0d", tmp_path) == tmp_path / "libb64-98cb6333.so.0d"
    assert perf.bundled_copy("libcudart.so.12", tmp_path) == tmp_path / "libcudart-09529672.so.12.6.77"
    assert perf.bundled_copy("libcudnn.so.9", tmp_path) is None
    assert perf.bundled_copy("libb64.so.0d", None) is None
    assert perf.bundled_copy("libb64.so.0d", tmp_path / "absent") is None


# A stand-in for the binary that behaves like the dynamic loader: it starts only when every library it names is found
# in a directory of LD_LIBRARY_PATH, and says which one it missed first, as ld.so does.
FAKE_LINKED_BINARY = """
for lib in {libs}; do
  found=no
  for dir in $(echo "$LD_LIBRARY_PATH" | tr ':' ' '); do
    [ -e "$dir/$lib" ] && found=yes
  done
  if [ $found = no ]; then
    echo "$0: error while loading shared libraries: $lib: cannot open shared object file: No such file or directory" >&2
    exit 127
  fi
done
echo "Perf Analyzer Version 2.51.0 (commit unknown)" >&2
"""


def test_shim_links_only_the_missing_libraries(tmp_path, monkeypatch):
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    binary = _executable(tmp_path / "perf_analyzer", FAKE_LINKED_BINARY.format(libs="libb64.so.0d libcudart.so.12"))
    libraries = tmp_path / "nvidia_pytriton.libs"
    libraries.mkdir()
    for name in ("libb64-98cb6333.so.0d", "libcudart-09529672.so.12.6.77"):
        (libraries / name).write_bytes(b"")
    analyzer = PerfAnalyzer.load(binary, libraries, tmp_path / "shim")
    assert analyzer.version == "2.51.0" and analyzer.library_dir == tmp_path / "shim"
    assert sorted(p.name for p in (tmp_path / "shim").iterdir()) == ["libb64.so.0d", "libcudart.so.12"]
    assert (tmp_path / "shim" / "libcudart.so.12").resolve() == libraries / "libcudart-09529672.so.12.6.77"
    assert analyzer.environment({"LD_LIBRARY_PATH": "/opt/x"})["LD_LIBRARY_PATH"] == f"{tmp_path / 'shim'}:/opt/x"
    assert analyzer.command_line(["-m", "ht"]).startswith(f"LD_LIBRARY_PATH={tmp_path / 'shim'} {binary} -m ht")


def test_no_shim_when_the_binary_starts_as_it_is(tmp_path, monkeypatch):
    own = tmp_path / "cuda" / "lib"
    own.mkdir(parents=True)
    (own / "libcudart.so.12").write_bytes(b"")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(own))
    binary = _executable(tmp_path / "perf_analyzer", FAKE_LINKED_BINARY.format(libs="libcudart.so.12"))
    analyzer = PerfAnalyzer.load(binary, tmp_path / "nvidia_pytriton.libs", tmp_path / "shim")
    assert analyzer.library_dir is None, "a machine with its own libcudart keeps it"
    assert not (tmp_path / "shim").exists()
    assert analyzer.command_line(["-m", "ht"]) == f"{binary} -m ht"


def test_a_library_nobody_ships_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    binary = _executable(tmp_path / "perf_analyzer", FAKE_LINKED_BINARY.format(libs="libcudnn.so.9"))
    (tmp_path / "libs").mkdir()
    with pytest.raises(BenchError, match="needs libcudnn.so.9, which this machine lacks"):
        PerfAnalyzer.load(binary, tmp_path / "libs", tmp_path / "shim")


def test_a_start_failure_of_another_kind_shows_its_output(tmp_path):
    binary = _executable(tmp_path / "perf_analyzer", "echo 'Illegal instruction' >&2\nexit 132\n")
    with pytest.raises(BenchError, match=r"--version failed \(exit code 132\): Illegal instruction"):
        PerfAnalyzer.load(binary, tmp_path / "libs", tmp_path / "shim")


def test_run_failure_shows_the_error_not_the_usage(tmp_path):
    script = ("echo 'error: failed to get model metadata: Request for unknown model'\necho 'Usage: perf_analyzer'\n"
              "echo '  -m <model name>'\nexit 99\n")
    analyzer = PerfAnalyzer(_executable(tmp_path / "perf_analyzer", script), None, "2.51.0")
    with pytest.raises(BenchError) as raised:
        analyzer.run(["-m", "nope"], 10, "at concurrency 1")
    message = str(raised.value)
    assert "exit code 99" in message and "unknown model" in message and "<model name>" not in message
    assert "command: " in message and "-m nope" in message


def test_run_is_stopped_at_its_timeout(tmp_path):
    analyzer = PerfAnalyzer(_executable(tmp_path / "perf_analyzer", "echo started\nexec sleep 30\n"), None, "x")
    with pytest.raises(BenchError, match=r"did not finish 4 requests within 0.5 s(.|\n)*started"):
        analyzer.run([], 0.5, "4 requests")


def test_load_plan_is_checked_and_bounded(tmp_path):
    plan = LoadPlan("127.0.0.1:8001", "grpc", (1, 4), requests=30)
    plan.validate()
    arguments = plan.arguments(4, 30, tmp_path / "in.json", "c4.csv")
    assert arguments[arguments.index("--concurrency-range") + 1] == "4:4"
    assert arguments[arguments.index("--request-count") + 1] == "30"
    assert arguments[arguments.index("-i") + 1] == "grpc" and arguments[arguments.index("-u") + 1] == plan.url
    assert "--verbose-csv" in arguments and "--percentile" not in arguments, "Avg latency is written only so"
    for bad, match in [(dict(url="http://127.0.0.1:8000"), "without a scheme"), (dict(protocol="tcp"), "protocol"),
                       (dict(concurrencies=()), "concurrency"), (dict(concurrencies=(0,)), "concurrency"),
                       (dict(requests=3, concurrencies=(4,)), "at least as many requests"),
                       (dict(timeout_s=0), "timeout"), (dict(warmup_requests=-1), "warm-up")]:
        with pytest.raises(BenchError, match=match):
            LoadPlan(**{"url": "127.0.0.1:8000", **bad}).validate()


def test_frames_must_fit_the_served_model():
    status = {"url": "h:1", "model": {"name": "ht", "input_dims": [-1, -1]}}
    perf.check_frames_fit(status, (480, 640))
    with pytest.raises(BenchError, match="takes frames of anyxany"):
        perf.check_frames_fit(status, (480, 640, 3))
    status["model"]["input_dims"] = [240, 320]
    perf.check_frames_fit(status, (240, 320))
    with pytest.raises(BenchError, match="takes frames of 240x320.*--frame-size"):
        perf.check_frames_fit(status, (480, 640))


def test_serve_table_lines_up_the_levels():
    from engine.bench.serving import format_serve_table

    level = perf.parse_csv(REAL_CSV)[0].to_dict()
    table = format_serve_table([level], markdown=True, label=("batching", ["dynamic"]))
    header, align, row = table.splitlines()
    assert header.startswith("| batching | concurrency | infer/s | p50 ms")
    assert align.startswith("|---|---:|")
    assert row == "| dynamic | 4 | 683.4 | 5.5 | 7.4 | 10.8 | 0.8 | 4.6 | 0.05 / 4.2 / 0.41 |"


def test_bench_serve_refuses_the_backend_options(tmp_path):
    done = subprocess.run([sys.executable, "-m", "engine", "bench", "--serve", "127.0.0.1:9", "--arch",
                           "openai-clip-vit-b16", "--frames", "64x64"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--arch, --frames measure the backends in this process" in done.stderr


def _real_run_prerequisites() -> PerfAnalyzer:
    from engine.errors import ServeError
    from engine.serve.server import ServerFiles

    try:
        ServerFiles.find()
    except ServeError as exc:
        pytest.skip(f"no Triton Inference Server to measure: {exc}")
    try:
        return PerfAnalyzer.load()
    except BenchError as exc:
        pytest.skip(f"perf_analyzer cannot run here: {exc}")


def test_real_run_against_a_real_server(tmp_path, monkeypatch):
    monkeypatch.setenv("HT_ENGINE_CACHE", str(tmp_path / "cache"))
    analyzer = _real_run_prerequisites()
    from engine.serve import Batching, Ports, TritonServer, describe

    model = describe(tiny_seg_package(tmp_path / "tiny.htpkg"))
    frames = perf.phantom_frames(72, 96, count=4, seed=1)
    with TritonServer(model, Batching(4, 500, 1), ports=Ports(0, 0, 0)) as server:
        plan = LoadPlan(server.http_url, "http", (1, 4), requests=30, warmup_requests=4, timeout_s=120)
        run = perf.measure(plan, frames, tmp_path / "in.json", analyzer)
        assert [level.concurrency for level in run.levels] == [1, 4]
        for level in run.levels:
            assert isinstance(level, PerfLevel)
            assert level.throughput_infer_s > 0 and level.reported_infer_s > 0
            assert 0 < level.p50_ms <= level.p90_ms <= level.p95_ms <= level.p99_ms
            assert level.compute_infer_ms > 0
        assert perf.server_ready(server.http_url, "http") and server.alive(), "the server stayed ready"
        assert run.server["model"]["max_batch_size"] == 4 and run.server["model"]["dynamic_batching"] is not None
        assert len(run.commands) == 2 and "--concurrency-range 4:4" in run.commands[1]

        # The CLI over gRPC against the same server: the table, the commands, the report.
        report_path = tmp_path / "report.json"
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        done = subprocess.run([sys.executable, "-m", "engine", "bench", "--serve", server.grpc_url, "--protocol",
                               "grpc", "--concurrency", "2", "--requests", "10", "--warmup-requests", "0",
                               "--frame-size", "72x96", "--json", report_path],
                              capture_output=True, text=True, timeout=180, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "concurrency  infer/s" in done.stdout and "--concurrency-range 2:2" in done.stdout
        assert perf.server_ready(server.grpc_url, "grpc")
    report = json.loads(report_path.read_text())
    assert report["perf_analyzer"]["version"] == analyzer.version
    assert report["plan"]["protocol"] == "grpc" and [lv["concurrency"] for lv in report["levels"]] == [2]
    assert report["machine"]["cpu"]["model"] and report["machine"]["git"]["sha"] is not None
    assert report["engine_version"] and report["commands"] and report["server"]["triton_version"]
