"""Packaging metadata lives in pyproject.toml; this file builds the two optional compiled extensions.

`engine._frame_resize` (csrc/cpu/frame_resize.c): the host frame preprocessing, Pillow's gray + bicubic resize bit
for bit and several times faster, plain C99 against the CPython API. Built wherever a C compiler is, whatever the CUDA
settings; its hot loops are compiled for AVX-512 (x86-64-v4), AVX2 and the baseline in one binary (the loader picks
one), so a wheel built here runs on any x86-64 CPU. If it does not build (no compiler, an unsupported one), the
install goes on with a warning and `engine.preprocess` calls Pillow itself: same results, slower.

`htkernels._C`, the CUDA kernels: `csrc/*.cu` are compiled by nvcc, the pybind11 bindings (`csrc/bindings.cpp`) by
the host C++ compiler, and both are linked against the static CUDA runtime: importing the extension needs no GPU and
no driver (launching a kernel without one reports a clear error). No libtorch is involved.

Environment:
- `HTK_SKIP_CUDA_BUILD=1`: do not build the CUDA extension (the package works without it: Triton/reference paths).
- `HTK_CUDA_ARCHS`: `;`- or `,`-separated compute capabilities, e.g. `80;90`; `+PTX` on one also embeds its PTX.
  Default: sm_80, sm_86, sm_89, sm_90 (+ compute_90 PTX for newer GPUs).
- `CUDA_HOME`: the CUDA toolkit, when `nvcc` is not on PATH.
- `HTK_CUDA_WERROR=0`: compiler warnings stay warnings (for a toolchain newer than the one CI checks with); it
  applies to the host C/C++ sources of both extensions.
Without nvcc the CUDA build is skipped with a warning.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
DEFAULT_ARCHS = "80;86;89;90+PTX"
# Our own files build with every warning as an error; third-party headers (pybind11, Python) are system includes.
WERROR = os.environ.get("HTK_CUDA_WERROR", "1") not in ("", "0")
HOST_WARNINGS = ["-Wall", "-Wextra", *(["-Werror"] if WERROR else [])]


CUDA_EXTENSION = "htkernels._C"
FRAME_RESIZE_EXTENSION = "engine._frame_resize"
# What a failed compile or link of the optional C extension raises (a missing compiler is an ExecError).
BUILD_ERRORS = (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError)


def _log(message: str, extension: str = CUDA_EXTENSION) -> None:
    print(f"{extension}: {message}", file=sys.stderr, flush=True)


def find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def find_cuda_home(nvcc: str) -> Path:
    """The toolkit root that holds the runtime headers (nvcc may be a wrapper script outside the toolkit)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), Path(nvcc).resolve().parent.parent,
                  "/usr/local/cuda"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "include" / "cuda_runtime_api.h").is_file():
            return Path(candidate)
    raise RuntimeError(f"cannot find the CUDA headers for {nvcc}; set CUDA_HOME to the toolkit root")


def gencode_flags(archs: str) -> list[str]:
    """`80;90+PTX` → nvcc -gencode flags: SASS for each capability, PTX where `+PTX` asks for it."""
    flags = []
    for item in filter(None, re.split(r"[;,\s]+", archs.strip())):
        match = re.fullmatch(r"(\d+)\.?(\d)?([af]?)(\+PTX)?", item, flags=re.IGNORECASE)
        if not match:
            raise ValueError(f"HTK_CUDA_ARCHS: cannot read {item!r}; expected capabilities like '80;86;90+PTX'")
        number = match.group(1) + (match.group(2) or "") + match.group(3).lower()
        flags += ["-gencode", f"arch=compute_{number},code=sm_{number}"]
        if match.group(4):
            flags += ["-gencode", f"arch=compute_{number},code=compute_{number}"]
    if not flags:
        raise ValueError("HTK_CUDA_ARCHS is empty; name at least one compute capability, e.g. '90'")
    return flags


def cuda_library_dir(cuda_home: Path) -> Path:
    for candidate in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
        if (cuda_home / candidate / "libcudart_static.a").is_file():
            return cuda_home / candidate
    raise RuntimeError(f"libcudart_static.a not found under {cuda_home}")


class BuildExtensions(build_ext):
    """The C extension: setuptools' own build, its failure a warning. The CUDA extension: its `.cu` sources compiled
    with nvcc (in parallel), then setuptools builds and links the rest."""

    def build_extension(self, ext):
        if ext.name == FRAME_RESIZE_EXTENSION:
            self.build_frame_resize(ext)
        else:
            self.build_cuda_extension(ext)

    def build_frame_resize(self, ext):
        if self.compiler.compiler_type == "unix":  # gcc or clang; other compilers build with their defaults
            ext.extra_compile_args = ["-std=c99", "-O3", *HOST_WARNINGS]
        started = time.perf_counter()
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as error:
            _log(f"WARNING: not built ({error}); frame preprocessing falls back to Pillow (same results, slower)",
                 FRAME_RESIZE_EXTENSION)
            return
        _log(f"built in {time.perf_counter() - started:.1f} s", FRAME_RESIZE_EXTENSION)

    def build_cuda_extension(self, ext):
        cuda_sources = [source for source in ext.sources if source.endswith(".cu")]
        ext.sources = [source for source in ext.sources if not source.endswith(".cu")]
        nvcc = ext.nvcc
        build_dir = Path(self.build_temp) / "cuda"
        build_dir.mkdir(parents=True, exist_ok=True)
        headers = list(CSRC.glob("*.h")) + list(CSRC.glob("*.cuh"))
        newest_header = max((header.stat().st_mtime for header in headers), default=0.0)
        archs = os.environ.get("HTK_CUDA_ARCHS", DEFAULT_ARCHS)
        nvcc_werror = ["-Werror", "all-warnings"] if WERROR else []
        flags = ["-std=c++17", "-O3", "-lineinfo", "--expt-relaxed-constexpr", *nvcc_werror,
                 "-Xcompiler", ",".join(["-fPIC", *HOST_WARNINGS]), f"-I{CSRC}", *gencode_flags(archs)]

        def compile_one(source: str) -> str:
            target = build_dir / (Path(source).stem + ".o")
            stamp = build_dir / (Path(source).stem + ".flags")
            command = [nvcc, "-c", source, "-o", str(target), *flags]
            fresh = (target.exists() and stamp.exists() and stamp.read_text() == " ".join(command)
                     and target.stat().st_mtime >= max(Path(source).stat().st_mtime, newest_header))
            if not fresh:
                started = time.perf_counter()
                subprocess.run(command, check=True)
                stamp.write_text(" ".join(command))
                _log(f"nvcc {Path(source).name} ({archs}) in {time.perf_counter() - started:.1f} s")
            return str(target)

        started = time.perf_counter()
        workers = max(1, min(len(cuda_sources), os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            objects = list(pool.map(compile_one, cuda_sources))
        ext.extra_objects = [*objects, *ext.extra_objects]
        # setuptools relinks only when a dependency is newer than the module: the objects and headers are ones.
        ext.depends = [*ext.depends, *objects, *map(str, headers)]
        super().build_extension(ext)
        _log(f"built for HTK_CUDA_ARCHS={archs} in {time.perf_counter() - started:.1f} s")


def frame_resize_extension() -> Extension:
    # optional: setuptools installs the package without the module when its build fails.
    return Extension(FRAME_RESIZE_EXTENSION, sources=["csrc/cpu/frame_resize.c"], language="c", optional=True)


def cuda_extensions() -> list[Extension]:
    if os.environ.get("HTK_SKIP_CUDA_BUILD", "") not in ("", "0"):
        _log("HTK_SKIP_CUDA_BUILD is set: not building the CUDA extension")
        return []
    nvcc = find_nvcc()
    if nvcc is None:
        _log("nvcc not found (set CUDA_HOME or put nvcc on PATH): not building the CUDA extension")
        return []
    try:
        import pybind11
    except ImportError:
        _log("pybind11 is not importable (pip install pybind11==3.1.0): not building the CUDA extension")
        return []
    cuda_home = find_cuda_home(nvcc)
    extension = Extension(
        CUDA_EXTENSION,
        sources=[str(path.relative_to(ROOT)) for path in sorted(CSRC.glob("*.cu"))] + ["csrc/bindings.cpp"],
        include_dirs=[str(CSRC), str(cuda_home / "include")],
        library_dirs=[str(cuda_library_dir(cuda_home))],
        libraries=["cudart_static", "rt", "pthread", "dl"],
        extra_compile_args=["-std=c++17", "-O2", "-isystem", pybind11.get_include(), *HOST_WARNINGS],
        language="c++",
    )
    extension.nvcc = nvcc
    return [extension]


setup(ext_modules=[frame_resize_extension(), *cuda_extensions()], cmdclass={"build_ext": BuildExtensions})
