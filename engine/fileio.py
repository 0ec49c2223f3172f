"""Writing outputs without ever leaving a half-written one: files through a temporary sibling and a rename,
directories through a staging sibling that replaces the target as a whole.

Imports no torch: the torch-free runtime writes masks and reports through it too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import PackageError


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)` and move the result into place, so no half-written file is ever left at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staging_directory(out: Path):
    """Yield a fresh sibling directory to write into; on success it replaces `out` as a whole, on failure it is
    removed: a build never leaves a half-written artifact, and a failed rebuild keeps the previous one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise PackageError(f"--out {out} exists and is not a directory")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".building", dir=out.parent))
    try:
        yield staging
        if out.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, backup / out.name)
            os.replace(staging, out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
