"""Writing outputs without ever leaving a half-written one, and without replacing what the user did not ask us to:
files through a temporary sibling and a rename, directories through a staging sibling that replaces the target as a
whole, and only where the target is empty or is what this engine writes there (`replaceable`).

Outputs get the permissions the umask gives, like any file a program creates (temporary files are owner-only while
they are written). Imports no torch: the torch-free runtime writes masks and reports through it too.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import OutputError

_UMASK_LOCK = threading.Lock()
_DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def current_umask() -> int:
    """The process umask (reading it means setting it: the lock keeps two readers from racing)."""
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)` and move the result into place, so no half-written file is ever left at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_replaceable_directory(out: Path, replaceable: Callable[[Path], bool], what: str, option: str = "--out"):
    """`OutputError` unless `out` is absent, an empty directory, or a directory `replaceable(out)` recognizes as
    one this engine wrote (which the user asks to replace by naming it)."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise OutputError(f"{option} {out} exists and is not a directory; give a new or empty directory, or "
                          f"{what} to replace")
    if any(out.iterdir()) and not replaceable(out):
        raise OutputError(f"{option} {out} is a directory that is not empty and not {what}: nothing was written "
                          f"(its contents are left alone); give a new or empty directory, or {what} to replace")


@contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM until the block is done (the swap of two directories must not stop half-way)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def staging_directory(out: Path, replaceable: Callable[[Path], bool], what: str, option: str = "--out"):
    """Yield a fresh sibling directory to write into; on success it replaces `out` as a whole, on failure (or an
    interrupt) it is removed: a build never leaves a half-written artifact, and a failed rebuild keeps the previous
    one. `out` may only be absent, empty, or `what` (`check_replaceable_directory`)."""
    out = Path(out)
    check_replaceable_directory(out, replaceable, what, option)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".building", dir=out.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())
        with _signals_deferred():
            check_replaceable_directory(out, replaceable, what, option)
            _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, out: Path) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, backup / out.name)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(backup / out.name, out)
        backup.rmdir()
        raise
    shutil.rmtree(backup, ignore_errors=True)


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
