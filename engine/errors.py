"""Typed errors. Every message says what was wrong and what was expected."""


class HTError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(HTError, ValueError):
    """A model configuration is invalid or unknown (arch, task, classes, layers)."""


class CheckpointError(HTError):
    """A checkpoint cannot be imported: unreadable, unsafe, or its keys/shapes do not match the arch."""


class PackageError(HTError):
    """A `.htpkg` package (or a built artifact) is missing, corrupt, altered or of an unknown version."""


class InputError(HTError, ValueError):
    """An input tensor, array or frame has the wrong shape, dtype or values."""


class BackendError(HTError):
    """A backend is unknown or cannot run on the requested device/precision."""


def summarize_names(names, limit=5):
    """`a, b, c (+12 more)`: enough names to act on without flooding the terminal."""
    names = sorted(names)
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f" (+{len(names) - limit} more)"
    return shown


class StreamError(HTError):
    """A stream stopped: a stage failed or did not stop in time. `frame` is the frame index involved, if any."""

    def __init__(self, message: str, *, source: str | None = None, frame: int | None = None):
        super().__init__(message)
        self.source = source
        self.frame = frame


class SourceError(StreamError, InputError):
    """A frame source cannot be opened or read (missing file, bad format, truncated data, a failing callable)."""


class OutputError(HTError):
    """An output path cannot be written as asked: an existing directory where a file goes, an unwritable folder, or a
    directory holding something the engine must not replace. Checked before the work starts."""


class ServeError(HTError):
    """The inference server cannot start or stopped: its binaries are missing, a port is taken, the model failed to
    load in it, or it exited on its own."""


class BenchError(HTError):
    """A load measurement cannot run: its load generator (Triton's perf_analyzer) is missing or failed, the server to
    measure is not reachable or not serving the model, or the generator's report cannot be read."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup that runs on an interrupt runs on a termination too."""
