"""Turning uploaded bytes into RGB pixels the model can take, or a clear client error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000


class BadImage(ValueError):
    """The upload is not an image the service can classify."""


def load_rgb(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file (EXIF-upright, RGB) into a uint8 HxWx3 array."""
    if not path.exists() or path.stat().st_size == 0:
        raise BadImage("the uploaded file is empty")
    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise BadImage(f"image has {image.width}x{image.height} pixels, over the "
                               f"{max_pixels} pixel limit")
            image = ImageOps.exif_transpose(image).convert("RGB")
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        # The message names no server path: clients see it.
        raise BadImage(f"not a readable image ({type(error).__name__})") from error
