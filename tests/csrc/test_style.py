"""csrc/ follows .clang-format (checked where clang-format is installed)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(str(path) for pattern in ("*.h", "*.cuh", "*.cu", "*.cpp", "cpu/*.c")
                 for path in (ROOT / "csrc").glob(pattern))


@pytest.mark.skipif(shutil.which("clang-format") is None, reason="clang-format is not installed")
def test_csrc_is_clang_formatted():
    assert SOURCES
    result = subprocess.run(["clang-format", "--dry-run", "--Werror", f"--style=file:{ROOT / '.clang-format'}",
                             *SOURCES], capture_output=True, text=True)
    assert result.returncode == 0, f"run `clang-format -i csrc/*` to fix:\n{result.stderr[:3000]}"
