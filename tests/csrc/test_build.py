"""The extension is compiled wherever nvcc is (CI compiles it), imports without a GPU, and says so without one."""

import re
import shutil
import subprocess

import pytest
import torch

from htkernels import cuda_ops

from .cuda_support import build_skipped, extension, nvcc_present


@pytest.mark.skipif(not nvcc_present() or build_skipped(), reason="no nvcc here, or HTK_SKIP_CUDA_BUILD is set")
def test_extension_built_where_nvcc_exists():
    built, reason = cuda_ops.extension_status()
    assert built, reason
    assert "htkernels._C" in reason


@pytest.mark.skipif(extension() is None, reason="htkernels._C is not built")
def test_extension_exports_launchers_and_constants():
    module = extension()
    for name in ("adapter_spatial", "adapter_spatial_workspace_bytes", "preprocess", "preprocess_workspace_bytes",
                 "device_count"):
        assert callable(getattr(module, name)), name
    assert (module.FLOAT32, module.FLOAT16, module.BFLOAT16) == (0, 1, 2)
    assert module.MAX_GRID_SIDE == 32
    assert module.CUDART_VERSION >= 12000


@pytest.mark.skipif(extension() is None or torch.cuda.is_available(), reason="needs the extension and no GPU")
def test_device_count_is_zero_without_gpu():
    assert extension().device_count() == 0


@pytest.mark.skipif(extension() is None, reason="htkernels._C is not built")
def test_workspace_sizes():
    module = extension()
    identity = module.adapter_spatial_workspace_bytes(3, 7, 5, 16, False)
    spectral = module.adapter_spatial_workspace_bytes(3, 7, 5, 16, True)
    assert identity >= 3 * 16 * 4
    assert spectral - identity == 3 * 7 * 5 * 16 * 4
    assert module.adapter_spatial_workspace_bytes(0, 7, 5, 16, True) == 0
    assert module.preprocess_workspace_bytes(2, 30, 16, 24) >= 2 * 30 * 24 + (16 + 24) * 8


@pytest.mark.skipif(extension() is None or shutil.which("readelf") is None, reason="needs the extension and readelf")
def test_extension_needs_neither_libtorch_nor_the_shared_cuda_runtime():
    # The launchers serve C++ programs and plugins too: no libtorch; the static CUDA runtime lets it import anywhere.
    dynamic = subprocess.run(["readelf", "-d", extension().__file__], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    assert needed, dynamic
    assert not [name for name in needed if re.match(r"lib(torch|c10|cudart)", name)], needed
