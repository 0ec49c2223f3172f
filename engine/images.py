"""Image files in and out (Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .fileio import atomic_write

_PALETTE = np.array([[0, 0, 0], [255, 64, 64], [64, 200, 64], [64, 128, 255], [255, 200, 0], [200, 64, 255]],
                    dtype=np.uint8)


def read_image(path) -> np.ndarray:
    """An image file → uint8 HxW (gray) or HxWx3 (RGB); 16-bit, float and unreadable files are refused."""
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        raise InputError(f"input image {path} is a folder; expected an image file (`ht-engine predict` and "
                         f"`ht-engine stream` take a folder of images)")
    if not path.is_file():
        raise InputError(f"input image {path} does not exist" if not path.exists() else
                         f"input image {path} is not a regular file")
    try:
        with Image.open(path) as image:
            # Pillow only warns below twice its limit; a frame that large is refused before it is decoded.
            if image.width * image.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels")
            image.load()
            if image.mode in ("L", "RGB"):
                return np.asarray(image).copy()
            if image.mode in ("RGBA", "P", "LA", "CMYK", "YCbCr", "1"):
                return np.asarray(image.convert("RGB" if image.mode not in ("LA", "1") else "L")).copy()
            raise InputError(f"input image {path} has mode {image.mode!r}; expected 8-bit gray or RGB "
                             f"(convert 16-bit/float images to 8 bits first)")
    except Image.DecompressionBombError as exc:
        raise InputError(f"input image {path} is too large ({exc}); expected at most {Image.MAX_IMAGE_PIXELS} "
                         f"pixels (a decompression bomb?)") from None
    except InputError:
        raise
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError... on bad files
        raise InputError(f"input image {path} cannot be read (corrupt or not an image): {type(exc).__name__}: "
                         f"{exc}") from exc


def write_png(path, array: np.ndarray) -> None:
    from PIL import Image

    atomic_write(Path(path), lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    return _PALETTE[mask.astype(np.int64) % len(_PALETTE)]


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    rgb = np.repeat(frame[..., None], 3, axis=2) if frame.ndim == 2 else frame
    colors = colorize_mask(mask).astype(np.float32)
    blended = np.where(mask[..., None] > 0, (1 - alpha) * rgb + alpha * colors, rgb)
    return blended.astype(np.uint8)
