"""`ht-engine` command line. Every subcommand lives in `engine.commands.<name>` with `register(subparsers)`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading

from .errors import HTError, Terminated

COMMAND_MODULES = ("import_", "init", "predict", "demo", "build", "export_triton", "stream", "phantom", "bench",
                   "upgrade")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ht-engine", description="Inference engine for Hybrid Tuning (HT) "
                                     "ultrasound segmentation/classification models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"engine.commands.{name}").register(subparsers)
    return parser


def main(argv=None) -> int:
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
