"""What a benchmark ran on: CPU and GPU model, driver, library versions, git commit, date."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .. import settings
from ..cpuinfo import cpu_flags as all_cpu_flags
from ..cpuinfo import cpu_model

# Distributions whose versions change the numbers (missing ones are recorded as null).
LIBRARIES = ("torch", "numpy", "triton", "onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt", "safetensors",
             "pillow")

REPO_ROOT = Path(__file__).resolve().parents[2]
# Variables of the libraries underneath that change how fast (thread pools, visible GPUs, the compiler's cache).
THREAD_AND_DEVICE_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                               "TORCHINDUCTOR_CACHE_DIR")
# Environment variables that change what runs or how fast (recorded when set): every setting the package reads
# (from its registry, so a new setting is recorded without an edit here) and those of the libraries underneath.
ENVIRONMENT = tuple(setting.name for setting in settings.SETTINGS) + THREAD_AND_DEVICE_VARIABLES


# The instruction-set extensions that change CPU numbers: AVX2/AVX-512 (BF16, VNNI), AVX-VNNI and AMX (bf16/int8 tiles).
CPU_FLAG_PREFIXES = ("avx512", "amx", "avx2", "avx_vnni")


def cpu_flags() -> list:
    """The CPU's vector and matrix extensions (`CPU_FLAG_PREFIXES`) from /proc/cpuinfo, sorted; [] elsewhere."""
    return sorted(f for f in all_cpu_flags() if f.startswith(CPU_FLAG_PREFIXES))


def library_versions(names=LIBRARIES) -> dict:
    """Each distribution's installed version, or None where it is not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _run(command: list, cwd: Path | None = None) -> str | None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict:
    """The commit the run measured (`sha`, 40 hex digits, or None outside a git checkout) and whether tracked files
    differed from it (`dirty`)."""
    sha = _run(["git", "rev-parse", "HEAD"], REPO_ROOT)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], REPO_ROOT) if sha else None
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def short_sha(sha: str | None) -> str:
    """The abbreviated commit the benchmark tables print: `git_state()["sha"]` cut to 10 digits."""
    return sha[:10] if sha else "unknown"


def gpu_info(device: str) -> dict | None:
    if not device.startswith("cuda"):
        return None
    import torch

    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    driver = _run(["nvidia-smi", f"--id={index}", "--query-gpu=driver_version", "--format=csv,noheader"])
    return {"name": props.name, "capability": f"{props.major}.{props.minor}", "memory_bytes": int(props.total_memory),
            "multiprocessors": int(props.multi_processor_count), "driver": driver, "cuda_runtime": torch.version.cuda}


def host_info() -> dict:
    """What a measurement ran on, without torch (one that runs no model in this process, such as a load test of a
    server): date, host, OS, Python, CPU, the environment variables that change numbers, the git commit."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(),
                "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "environment": {name: os.environ[name] for name in ENVIRONMENT if name in os.environ},
        "git": git_state(),
    }


def machine_info(device: str) -> dict:
    """`host_info()` with torch's thread count, the GPU and the library versions."""
    import torch

    info = host_info()
    info["cpu"]["torch_threads"] = torch.get_num_threads()
    return {**info, "gpu": gpu_info(device), "libraries": library_versions()}
