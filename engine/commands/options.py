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
