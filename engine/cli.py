"""`ht-engine` command line. Every subcommand lives in `engine.commands.<name>` with `register(subparsers)`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import platform
import signal
import sys
import threading
from collections.abc import Sequence
from importlib import metadata

from .errors import HTError, Terminated
from .version import __version__

COMMAND_MODULES = ("import_", "init", "predict", "demo", "build", "export_triton", "stream", "holoscan", "serve",
                   "phantom", "bench", "upgrade")
# The runtimes `ht-engine --version` reports: always listed (version or "not installed"), then GPU builds and
# CUDA-versioned wheels of the same runtimes where they are installed. Read from the distributions' metadata: none
# of these heavy packages is imported.
RUNTIME_DISTRIBUTIONS = ("torch", "onnxruntime", "openvino", "tensorrt")
OPTIONAL_DISTRIBUTIONS = ("onnxruntime-gpu", "tensorrt-cu12", "tensorrt-cu13", "triton")


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def version_report() -> str:
    """What `ht-engine --version` prints: the engine version (with the git commit when run from a checkout), Python,
    and the versions of the runtimes underneath."""
    from .bench.machine import REPO_ROOT, git_state

    line = f"ht-engine {__version__}"
    # Only a checkout has the package next to .git; an installed copy inside some other repository must not report
    # that repository's commit.
    if (REPO_ROOT / ".git").exists():
        state = git_state()
        if state["sha"]:
            line += f" (git {state['sha'][:12]}{', modified' if state['dirty'] else ''})"
    lines = [line, f"python {platform.python_version()}"]
    for name in RUNTIME_DISTRIBUTIONS:
        lines.append(f"{name} {_distribution_version(name) or 'not installed'}")
    for name in OPTIONAL_DISTRIBUTIONS:
        found = _distribution_version(name)
        if found:
            lines.append(f"{name} {found}")
    return "\n".join(lines)


class VersionAction(argparse.Action):
    """`--version`: computed when asked for (a git call and metadata look-ups), not each time the parser is built."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_report())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ht-engine", description="Inference engine for Hybrid Tuning (HT) "
                                     "ultrasound segmentation/classification models.")
    parser.add_argument("--version", action=VersionAction,
                        help="print the engine version (and git commit in a checkout), Python and runtime versions")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"engine.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with terminate_as_interrupt():
            return int(args.handler(args) or 0)
    except HTError as exc:
        print(f"ht-engine {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"ht-engine {args.command}: terminated (SIGTERM); nothing half-written was left", file=sys.stderr)
        return 143
    except OSError as exc:
        # Last resort: known paths are checked up front with typed errors; a file system failure anywhere else
        # (disk full, a path removed mid-run) is still one line for the user, not a traceback.
        where = f" {exc.filename}" if exc.filename else ""
        print(f"ht-engine {args.command}: error:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ht-engine {args.command}: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, so the cleanups that Ctrl-C runs
    (staging directories removed, streams drained) run on a termination too; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
