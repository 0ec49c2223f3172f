"""Range-checked argparse types shared by the subcommands: a bad number is a usage error (exit 2) at parse time,
with the accepted range in the message, before any model is loaded or any output written."""

from __future__ import annotations

import argparse
import math

# Largest micro-batch a command accepts. Larger ones only add latency on a stream, and the warm-up allocates the
# whole batch of model input at once: 1024 frames of 3x224x224 float32 are 0.6 GB before any activation.
MAX_BATCH = 1024
MAX_FPS = 1000.0
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_CLASSES = 4096


def integer(low: int, high: int, what: str = "an integer", reason: str = ""):
    """An argparse type accepting integers in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; expected {what} in {low}..{high}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; expected {what} in {low}..{high}{reason}")
        return value

    parse.__name__ = what
    return parse


def real(low: float, high: float = math.inf, what: str = "a number", low_open: bool = False):
    """An argparse type accepting finite numbers in [low, high] (or (low, high] with `low_open`)."""
    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; expected {what} in {bounds}") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"{text} is out of range; expected a finite {what} in {bounds}")
        return value

    parse.__name__ = what
    return parse


batch_size = integer(1, MAX_BATCH, "a batch size",
                     f" (a larger batch only adds latency, and {MAX_BATCH} frames of model input are already 0.6 GB)")
frame_rate = real(0.0, MAX_FPS, "frame rate (fps)", low_open=True)
seed = integer(0, MAX_SEED, "a seed")
class_count = integer(1, MAX_CLASSES, "a class count")
milliseconds = real(0.0, 3.6e6, "duration (ms)", low_open=True)
seconds = real(0.0, 86400.0, "duration (s)")

MAX_FRAME_SIDE = 16384  # an 8K frame's long side is 7680; past this a "frame" is a mistake, not a video


def frame_sizes(text: str) -> list:
    """`HxW[,HxW...]` → `[(H, W), ...]`, each side in 1..MAX_FRAME_SIDE."""
    sizes = []
    for item in (part.strip() for part in text.split(",")):
        height, sep, width = item.lower().partition("x")
        if not sep or not height.isdigit() or not width.isdigit():
            raise argparse.ArgumentTypeError(f"{item!r} is not a frame size; expected HxW, e.g. 480x640")
        size = (int(height), int(width))
        if not all(1 <= side <= MAX_FRAME_SIDE for side in size):
            raise argparse.ArgumentTypeError(f"{item!r}: each side must be in 1..{MAX_FRAME_SIDE}")
        sizes.append(size)
    return sizes


frame_sizes.__name__ = "comma-separated frame sizes"


def key_value(text: str) -> tuple:
    """`KEY=VALUE` → `(KEY, VALUE)` (the value may hold `=`; the key may not be empty)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, e.g. video_size=1920x1080")
    return key.strip(), value


key_value.__name__ = "KEY=VALUE"


def add_capture_options(parser) -> None:
    """`--input-format` / `--input-option`: the source is a device or stream one of FFmpeg's input formats opens
    (`engine.stream.CaptureSource`), shared by `stream` and `holoscan`."""
    parser.add_argument("--input-format", default=None, metavar="FORMAT",
                        help="read SOURCE with this FFmpeg input format through PyAV: v4l2 (SOURCE a capture device "
                             "such as /dev/video0), lavfi (a virtual device such as testsrc=size=640x480:rate=30), "
                             "mpegts (a network stream such as udp://0.0.0.0:5000), … (default: SOURCE is a file or "
                             "folder)")
    parser.add_argument("--input-option", type=key_value, action="append", default=None, dest="input_options",
                        metavar="KEY=VALUE",
                        help="an option of the input format, repeatable (v4l2: video_size=1920x1080, framerate=30, "
                             "input_format=yuyv422; `ffmpeg -h demuxer=v4l2` lists them; default: none)")


def capture_source(args):
    """The `CaptureSource` `--input-format`/`--input-option` ask for, or None when SOURCE is a file or folder."""
    from ..stream import open_source

    if args.input_format is None and not args.input_options:
        return None
    return open_source(args.source, input_format=args.input_format, input_options=dict(args.input_options or ()))


def available_memory() -> int | None:
    """Bytes of memory the system can give now (Linux `MemAvailable`); None where that is not known."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
