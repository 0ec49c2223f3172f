"""Every environment variable the engine reads, declared once, typed, with what it does.

Code reads a setting through its declaration here (`settings.COMPILE.get()`), never `os.environ` directly, so this
module is the whole list (docs/settings.md shows it). Booleans share one grammar: 1/true/yes/on and
0/false/no/off (`htkernels.envs.parse_flag`). The kernel library's own variables are declared in `htkernels.envs`
(it imports nothing from the engine) and listed here with the rest. Build switches (`HTK_SKIP_CUDA_BUILD`,
`HTK_CUDA_ARCHS`, `HTK_CUDA_WERROR`) are read by `setup.py` only, at build time.
"""

from __future__ import annotations

from pathlib import Path

from htkernels.envs import SETTINGS as KERNEL_SETTINGS
from htkernels.envs import Setting, flag


def _path(text: str) -> Path | None:
    return Path(text).expanduser() if text.strip() else None


def _thread_count(text: str) -> int | None:
    if not text.strip():
        return None
    try:
        count = int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number of threads, 1 or more (or empty for the default)") from None
    if count < 1:
        raise ValueError(f"expected a whole number of threads, 1 or more, got {count}")
    return count


def _int8_float(text: str) -> str:
    value = text.strip().lower() or "auto"
    if value not in ("auto", "f32"):
        raise ValueError(f"expected auto or f32, got {text.strip()!r}")
    return value


CACHE = Setting("HT_ENGINE_CACHE", _path, None, "Root of the engine's on-disk caches (compiled CPU code under "
                "`<root>/inductor`, the `auto` backend table); default `~/.cache/ht-engine`.")
COMPILE = flag("HT_ENGINE_COMPILE", True, "Compile the optimized CPU backend with torch.compile (0: run it eagerly; "
               "no compiler or C++ toolchain needed).")
HEAD_BRANCHES = flag("HT_ENGINE_HEAD_BRANCHES", False, "On CUDA, run each head level's layers on a side stream as "
                     "soon as its feature is ready, overlapping the later blocks (parallel branches in the CUDA "
                     "graph); off until a GPU run measures it faster.")
OPENVINO_INT8_FLOAT = Setting("HT_ENGINE_OPENVINO_INT8_FLOAT", _int8_float, "auto", "Precision of the float parts "
                              "(LayerNorm, attention, adapters, unquantized GEMMs) of an OpenVINO int8 artifact on "
                              "the CPU: auto = bf16 where the CPU has bf16 units (OpenVINO's own default there), "
                              "else f32; f32 = always f32 (closer to fp32, slower).")
PERF_ANALYZER = Setting("HT_PERF_ANALYZER", _path, None, "The perf_analyzer binary `ht-engine bench --serve` runs; "
                        "default: `perf_analyzer` on PATH, else `<environment>/opt/perf_analyzer/bin/perf_analyzer` "
                        "(where `make` installs it).")
THREADS = Setting("HT_ENGINE_THREADS", _thread_count, None, "Threads of the inference pool (torch's intra-op "
                   "threads, ONNX Runtime's intra-op threads, OpenVINO's CPU threads; `engine.threads`); default: the "
                   "cores this process may use.")
TRT_TIMING_CACHE_DIR = Setting("HT_TRT_TIMING_CACHE_DIR", _path, None, "Where TensorRT timing caches are kept (one "
                               "per GPU and TensorRT version); default `<cache root>/tensorrt`.")

SETTINGS = (CACHE, COMPILE, HEAD_BRANCHES, OPENVINO_INT8_FLOAT, PERF_ANALYZER, THREADS, TRT_TIMING_CACHE_DIR) + KERNEL_SETTINGS


def cache_root() -> Path:
    """The engine's cache root: `HT_ENGINE_CACHE` or `~/.cache/ht-engine`."""
    return CACHE.get() or Path.home() / ".cache" / "ht-engine"
