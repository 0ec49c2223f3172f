"""Image files in and out (Pillow)."""

from __future__ import annotations

from functools import lru_cache
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


def mask_image(mask: np.ndarray):
    """A class mask as a palette ("P") image: the pixel values stay the class indices (reading the PNG back gives
    class ids) and viewers show them in the class colours of `colorize_mask`."""
    from PIL import Image

    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise InputError(f"a mask image needs a uint8 [H,W] class mask, got {mask.dtype} {mask.shape}")
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
    image.putpalette(colorize_mask(np.arange(256)).ravel().tolist())
    return image


def write_mask_png(path, mask: np.ndarray) -> None:
    """`mask_image(mask)` written atomically as a PNG."""
    image = mask_image(mask)
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    return _PALETTE[mask.astype(np.int64) % len(_PALETTE)]


def content_region(pixels: np.ndarray) -> np.ndarray:
    """Where the image has content: in each row, from its first to its last non-black pixel. An ultrasound sector
    (fan) is convex along rows, so this is the sector, with its dark (hypoechoic) interior kept."""
    lit = pixels > 0 if pixels.ndim == 2 else (pixels > 0).any(axis=2)
    columns = np.arange(lit.shape[1])
    first = np.where(lit.any(axis=1), lit.argmax(axis=1), lit.shape[1])
    last = lit.shape[1] - 1 - lit[:, ::-1].argmax(axis=1)
    return (columns[None, :] >= first[:, None]) & (columns[None, :] <= last[:, None])


@lru_cache(maxsize=8)
def _legend(classes: tuple, height: int, width: int) -> np.ndarray:
    """The legend patch (RGB, drawn once per class list and frame size): a colour swatch and name per foreground
    class."""
    from PIL import Image, ImageDraw

    names = [(index, name) for index, name in enumerate(classes) if index > 0]
    line = 12
    size = (min(width, 24 + 7 * max(len(name) for _, name in names)), min(height, 4 + line * len(names)))
    patch = Image.new("RGB", size)
    draw = ImageDraw.Draw(patch)
    for row, (index, name) in enumerate(names):
        color = tuple(int(c) for c in colorize_mask(np.array([index]))[0])
        draw.rectangle((2, 3 + row * line, 10, 11 + row * line), fill=color)
        draw.text((14, 1 + row * line), name, fill=(255, 255, 255))
    return np.asarray(patch)


def mask_edges(mask: np.ndarray) -> np.ndarray:
    """Pixels on either side of a class boundary (a two-pixel contour)."""
    edge = np.zeros(mask.shape, dtype=bool)
    vertical = mask[1:, :] != mask[:-1, :]
    horizontal = mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def burn_text(rgb: np.ndarray, lines: list, color=(255, 255, 255)) -> np.ndarray:
    """`lines` of text burned into the bottom left of an RGB uint8 frame, on a dark band so they stay legible."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    line = 12
    top = max(0, rgb.shape[0] - 4 - line * len(lines))
    draw.rectangle((0, top, rgb.shape[1], rgb.shape[0]), fill=(0, 0, 0))
    for row, text in enumerate(lines):
        draw.text((4, top + 2 + row * line), text, fill=color)
    return np.asarray(image).copy()


def draw_overlay(pixels: np.ndarray, result, alpha: float = 0.35, legend: bool = False) -> np.ndarray:
    """The one overlay style of `predict` and `stream`: an RGB uint8 frame with the mask tinted in its class colours
    and outlined, both clipped to the image content (`content_region`), or a probability bar (classification);
    `legend` adds the class names in their colours at the top left."""
    rgb = np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels.copy()
    if result.mask is not None:
        mask = np.where(content_region(pixels), result.mask, 0).astype(np.uint8)
        labelled = mask > 0
        if labelled.any():
            # Blend only the labelled pixels, in 8-bit fixed point: a full-frame float blend costs more than
            # the rest of the stream sink on a 2-core CPU.
            weight = int(round(alpha * 256))
            colors = colorize_mask(mask[labelled]).astype(np.uint16)
            rgb[labelled] = ((256 - weight) * rgb[labelled].astype(np.uint16) + weight * colors) >> 8
        edge = mask_edges(mask)
        rgb[edge] = colorize_mask(np.maximum(mask[edge], 1))  # the contour takes the foreground class's colour
        if legend and len(result.classes) > 1:
            patch = _legend(tuple(result.classes), *rgb.shape[:2])
            rgb[:patch.shape[0], :patch.shape[1]] = patch
    if result.probabilities is not None:
        height, width = rgb.shape[:2]
        bar = max(4, height // 40)
        top = int(np.argmax(result.probabilities))
        filled = int(round(float(result.probabilities[top]) * width))
        rgb[:bar, :, :] = 0
        rgb[:bar, :filled, :] = colorize_mask(np.array([top + 1]))[0]
    return rgb
