"""Turning uploaded bytes into RGB pixels the model can take, or a clear client error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = 40_000_000
# Pillow plugin names. Restricting Image.open to these keeps every other decoder (TIFF, PSD,
# EPS via Ghostscript, ...) away from untrusted bytes. Phones' multi-picture JPEGs open
# through the JPEG plugin as format "MPO".
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
FORMAT_NAMES = "JPEG, PNG, WebP, BMP or GIF"
WHITE = (255, 255, 255, 255)
ORIENTATION = 0x0112  # the EXIF tag; values 2..8 say how to turn the stored pixels upright
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


class BadImage(ValueError):
    """The upload is not an image the service can classify; status is the HTTP answer."""

    def __init__(self, message: str, status: int = 400, code: str = "bad_image") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.index = 0  # which upload of a batch, set by the service


@contextmanager
def opened(path: Path, max_pixels: int = MAX_PIXELS) -> Iterator[Image.Image]:
    """Open an upload lazily (header only), refusing empty files, other formats and bombs."""
    if not path.exists() or path.stat().st_size == 0:
        raise BadImage("the uploaded file is empty", code="empty_file")
    # Our own limit below replaces Pillow's (a warning, then an error without the size).
    Image.MAX_IMAGE_PIXELS = None
    try:
        image = Image.open(path, formats=FORMATS)
    except Exception as error:  # noqa: BLE001 - hostile headers raise many types
        raise client_error(error, f"not a {FORMAT_NAMES} image", "not_an_image") from None
    with image:
        if image.width * image.height > max_pixels:
            raise too_many_pixels(image, max_pixels)
        yield image


def too_many_pixels(image: Image.Image, max_pixels: int) -> BadImage:
    """The error for an image over the pixel limit (a decompression bomb, or just huge)."""
    return BadImage(f"image has {image.width}x{image.height} pixels, over the {max_pixels} "
                    "pixel limit", status=413, code="too_many_pixels")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparent areas become white, 16-bit grey is scaled."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        grey = (np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return image.convert("RGB")


@contextmanager
def decoding_errors() -> Iterator[None]:
    """Turn any failure of a decoder on untrusted bytes into a client error."""
    try:
        yield
    except BadImage:
        raise
    except Exception as error:  # noqa: BLE001 - decoders raise many types on hostile input
        raise client_error(error, f"the image data could not be decoded "
                           f"({type(error).__name__})", "undecodable_image") from None


def client_error(error: Exception, message: str, code: str) -> BadImage:
    """The client's view of a decoder failure: truncated, or the given message."""
    if "truncated" in str(error).lower():
        return BadImage("the image file is truncated", code="truncated_image")
    return BadImage(message, code=code)


def load_rgb(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file (EXIF-upright, RGB, first frame) into a uint8 HxWx3 array."""
    with opened(path, max_pixels) as image, decoding_errors():
        return np.asarray(to_rgb(ImageOps.exif_transpose(image)), dtype=np.uint8)


def prepare(path: Path, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an upload once, straight to the model's size x size RGB input (uint8)."""
    with opened(path, max_pixels) as image, decoding_errors():
        if image.format in ("JPEG", "MPO"):
            # Let libjpeg scale down by 1/2..1/8 while decoding: big photos cost a fraction.
            image.draft("RGB", (size, size))
        image.load()
        turn = UPRIGHT.get(image.getexif().get(ORIENTATION, 1))
        resized = to_rgb(image).resize((size, size), Image.Resampling.BILINEAR)
        # The output is square, so turning after resizing is the same, on fewer pixels.
        upright = resized.transpose(turn) if turn is not None else resized
        return np.asarray(upright, dtype=np.uint8)
