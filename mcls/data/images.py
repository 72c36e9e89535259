"""Decoding images once into uint8 arrays at model resolution; the one place that turns a file into pixels."""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mcls.errors import UserError

log = logging.getLogger(__name__)


class BadImageError(UserError):
    """An image that cannot be decoded; names every such file."""


# Far above any camera's face photo (a 24 MP camera gives 24e6), far below what would exhaust memory; the config's
# max_image_megapixels sets it for a run.
MAX_PIXELS = 64_000_000


def decode_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """RGB uint8 HxWx3, EXIF orientation applied; grayscale, palette, alpha and 16-bit files are converted. A file
    whose header claims more than `max_pixels` is refused before it is decoded."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP and refuses from 179 MP itself; the limit below speaks first, in one sentence
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            # checked from the header, before decoding: a "decompression bomb" would take minutes and gigabytes
            if im.width * im.height > max_pixels:
                raise BadImageError(too_large(path, f"{im.width}x{im.height} pixels", max_pixels))
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grayscale: keep the dynamic range instead of clipping to 255.
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if arr.max() > 255 else 255.0
                im = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8))
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            return np.asarray(im.convert("RGB"))
    except BadImageError:
        raise
    except Image.DecompressionBombError as err:  # too large for Pillow even to open: the header's size is in its words
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        raise BadImageError(too_large(path, f"{int(pixels[1]):,} pixels" if pixels else "its size", max_pixels)) \
            from None
    except FileNotFoundError:
        raise BadImageError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        size = path.stat().st_size if path.exists() else 0
        what = "empty file (0 bytes)" if size == 0 else f"cannot decode image ({type(err).__name__}: {err})"
        raise BadImageError(f"{path}: {what}") from None


def too_large(path, size: str, max_pixels: int) -> str:
    return (f"{path}: {size} is more than the {max_pixels / 10**6:g} megapixels accepted for one face photo "
            "(max_image_megapixels); resize it, leave it out, or raise max_image_megapixels")


def crop_array(arr: np.ndarray, box) -> np.ndarray:
    """The pixels of `box` (x1, y1, x2, y2); the whole image when box is None."""
    if box is None:
        return arr
    x1, y1, x2, y2 = (int(v) for v in box)
    return arr[y1:y2, x1:x2]


def load_resized(path: str | Path, size: int, box=None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decoded, cut to `box` (x1, y1, x2, y2) when given, and resized to size x size: identical for training,
    validation and prediction."""
    arr = crop_array(decode_image(path, max_pixels), box)
    if arr.shape[:2] != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BICUBIC))
    return arr
