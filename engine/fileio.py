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

from .errors import OutputError, PackageError


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


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _probe_writable(folder: Path, option: str, path: Path) -> None:
    """Create and remove a file in `folder`: permission bits say nothing for root or for /proc and read-only mounts."""
    if not folder.is_dir():
        raise OutputError(f"{option} {path}: {folder} is not a directory; expected a path in a writable folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ht-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot write in {folder} ({exc.strerror or exc}); expected a path in a "
                          f"writable folder") from None


def check_output_file(path, option: str) -> Path:
    """Refuse, before any work starts, an output file that could not be written: `path` is an existing directory,
    or its folder (or the nearest existing folder above it, when it will be created) is not a writable directory."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is an existing directory; expected a file path")
    _probe_writable(_nearest_existing(path.parent), option, path)
    return path


def check_output_directory(path, option: str) -> Path:
    """Refuse, before any work starts, an output folder that could not be written: `path` exists and is not a
    directory, or it (or the nearest existing folder above it, when it will be created) is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} exists and is not a directory; expected a folder for the outputs")
    _probe_writable(_nearest_existing(path), option, path)
    return path
