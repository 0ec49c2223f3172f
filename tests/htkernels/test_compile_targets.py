"""Every Triton kernel variant compiles for sm_90, the H100/H200 target (no GPU needed: Triton's LLVM and ptxas)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("arch", [90])
def test_kernels_compile_for_gpu(arch):
    triton = pytest.importorskip("triton", reason="Triton is not installed (pip install '.[triton]')")
    pinned = [line.split("==")[1].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
              if line.startswith("triton==")]
    if pinned and triton.__version__ != pinned[0]:
        pytest.skip(f"the ahead-of-time compile API used here is Triton {pinned[0]}'s; this is {triton.__version__}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "tests.htkernels.compile_targets", str(arch)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert re.search(r"variants, \d+ fp32 over shared memory, 0 failed$", done.stdout.strip()), done.stdout[-2000:]
