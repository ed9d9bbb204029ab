"""Turning uploaded bytes into RGB pixels the model can take, or a clear client error."""

from __future__ import annotations

import ctypes
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from service.config import Limits

# An upload as either request form delivers it: the file BentoML spooled a multipart upload
# to, or a raw request body in memory.
Source = Path | bytes
MAX_PIXELS = Limits.max_pixels
# Decodes over this many pixels go through their own, narrower lane (service.lanes) and give
# their memory back afterwards.
LARGE_PIXELS = 4_000_000
REDUCING_GAP = 3  # box-reduce to 3x the model's size, then resize: as good as a full resize
STRIP_PIXELS = 1_000_000  # pixels converted at once while reducing
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


def as_limits(limits: Limits | int | None) -> Limits:
    """Limits from Limits, a plain pixel limit for every format, or None (the defaults)."""
    if isinstance(limits, Limits):
        return limits
    if limits is None:
        return Limits()
    return Limits(max_pixels=limits, max_full_decode_pixels=limits)


@contextmanager
def opened(path: Source, limits: Limits | int | None = None) -> Iterator[Image.Image]:
    """Open an upload (a file, or a body's bytes) lazily (header only), refusing empty ones,
    other formats and images over the pixel limit of their format (decompression bombs among
    them)."""
    limits = as_limits(limits)
    empty = not path if isinstance(path, bytes) else (not path.exists()
                                                      or path.stat().st_size == 0)
    if empty:
        raise BadImage("the uploaded file is empty", code="empty_file")
    # Our own limit below replaces Pillow's (a warning, then an error without the size).
    Image.MAX_IMAGE_PIXELS = None
    try:
        image = Image.open(io.BytesIO(path) if isinstance(path, bytes) else path,
                           formats=FORMATS)
    except Exception as error:  # noqa: BLE001 - hostile headers raise many types
        raise client_error(error, f"not a {FORMAT_NAMES} image", "not_an_image") from None
    with image:
        limit = pixel_limit(image, limits)
        if image.width * image.height > limit:
            raise too_many_pixels(image, limit)
        yield image


def too_many_pixels(image: Image.Image, limit: int) -> BadImage:
    """The error for an image over its format's pixel limit (a bomb, or just huge)."""
    kind = "a baseline JPEG" if decodes_small(image) else f"a {kind_name(image)} image"
    return BadImage(f"image has {image.width}x{image.height} pixels, over the {limit} pixel "
                    f"limit for {kind}; send it scaled down (the model uses a few hundred "
                    "pixels a side)", status=413, code="too_many_pixels")


def kind_name(image: Image.Image) -> str:
    """The format as users know it, for messages."""
    if image.format in ("JPEG", "MPO"):
        return "progressive JPEG" if image.info.get("progressive") else "JPEG"
    return {"WEBP": "WebP"}.get(image.format or "", image.format or "unknown")


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


def load_rgb(path: Source, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file (EXIF-upright, RGB, first frame) into a uint8 HxWx3 array."""
    with opened(path, max_pixels) as image, decoding_errors():
        return np.asarray(to_rgb(ImageOps.exif_transpose(image)), dtype=np.uint8)


def decodes_small(image: Image.Image) -> bool:
    """Whether the decoder itself can scale down: baseline JPEG only (libjpeg's 1/2..1/8).

    A progressive JPEG keeps every DCT coefficient of the full image in memory until its
    last scan, whatever the output scale, so it costs like a full decode.
    """
    return image.format in ("JPEG", "MPO") and not image.info.get("progressive")


def pixel_limit(image: Image.Image, limits: Limits) -> int:
    """The most pixels accepted for this image's format."""
    if decodes_small(image):
        return limits.max_pixels
    # Pillow's WebP decoder holds four frame-sized RGBA buffers (16 bytes a pixel), where a
    # PNG, GIF or BMP decode holds one of at most 4.
    share = 4 if image.format == "WEBP" else 1
    return min(limits.max_pixels, limits.max_full_decode_pixels // share)


def decoded_pixels(image: Image.Image, size: int) -> int:
    """How many pixels the decoder will produce for a size x size output (before any work)."""
    if not decodes_small(image):
        return image.width * image.height
    scale = 1
    while scale < 8 and image.width // (scale * 2) >= size and image.height // (scale * 2) >= size:
        scale *= 2
    return -(-image.width // scale) * -(-image.height // scale)


def decode_cost(path: Source, size: int, limits: Limits | None = None) -> int:
    """Pixels a decode of this upload to size x size will produce; checks the header only."""
    limits = as_limits(limits)
    with opened(path, limits) as image:
        return decoded_pixels(image, size)


def prepare(path: Source, size: int, limits: Limits | int | None = None) -> np.ndarray:
    """Decode an upload once, straight to the model's size x size RGB input (uint8)."""
    with opened(path, as_limits(limits)) as image:
        return prepare_opened(image, size)


def prepare_if_small(path: Source, size: int, limits: Limits, most_pixels: int
                     ) -> np.ndarray | int:
    """prepare() when the decode produces at most most_pixels; else how many it would
    produce, nothing decoded (the header is read once either way)."""
    with opened(path, limits) as image:
        pixels = decoded_pixels(image, size)
        return pixels if pixels > most_pixels else prepare_opened(image, size)


def prepare_opened(image: Image.Image, size: int) -> np.ndarray:
    """prepare() of an image opened by opened()."""
    with decoding_errors():
        if image.format in ("JPEG", "MPO"):
            # libjpeg writes 1/2..1/8 scale (a progressive JPEG still holds all coefficients).
            image.draft("RGB", (size, size))
        image.load()
        turn = UPRIGHT.get(image.getexif().get(ORIENTATION, 1))
        large = image.width * image.height > LARGE_PIXELS
        small = reduced_rgb(image, size)
        if small is not image:
            image.close()  # the full-size buffer goes now, before the resize
        resized = small.resize((size, size), Image.Resampling.BILINEAR)
        # The output is square, so turning after resizing is the same, on fewer pixels.
        upright = resized.transpose(turn) if turn is not None else resized
        pixels = np.asarray(upright, dtype=np.uint8)
    if large:
        release_memory()
    return pixels


def reduced_rgb(image: Image.Image, size: int) -> Image.Image:
    """The image in RGB, box-averaged down to at least REDUCING_GAP x size on each side.

    It works in strips, so no full-size copy is ever made besides the decoded image itself
    (a 40 Mpx PNG converted whole to RGB would take 160 MB more), and the resize that follows
    reads a few hundred thousand pixels instead of millions.
    """
    fx = max(1, image.width // (size * REDUCING_GAP))
    fy = max(1, image.height // (size * REDUCING_GAP))
    if fx == fy == 1:
        return to_rgb(image)
    rows = max(1, STRIP_PIXELS // (image.width * fy)) * fy
    out: Image.Image | None = None
    for top in range(0, image.height, rows):
        box = (0, top, image.width, min(image.height, top + rows))
        if image.mode in ("L", "RGB", "CMYK"):
            part = image.reduce((fx, fy), box)  # reads the strip in place
        else:
            part = reducible(image.crop(box)).reduce((fx, fy))
        if out is None:
            out = Image.new(part.mode, (-(-image.width // fx), -(-image.height // fy)))
        out.paste(part, (0, top // fy))
    assert out is not None  # an open image has at least one row
    # Transparency is flattened on the reduced image: the same result (reduce averages
    # premultiplied colours), on a fraction of the pixels.
    return to_rgb(out)


def reducible(strip: Image.Image) -> Image.Image:
    """A strip in a mode Image.reduce takes, keeping its transparency."""
    if strip.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(strip) >> 8).astype(np.uint8), "L")
    if strip.mode == "1":
        return strip.convert("L")
    if strip.mode in ("P", "PA"):
        transparent = strip.mode == "PA" or "transparency" in strip.info
        return strip.convert("RGBA" if transparent else "RGB")
    return strip


def release_memory() -> None:
    """Hand freed heap pages back to the system after a large decode.

    glibc keeps freed blocks of Pillow's large buffers in its arenas (its mmap threshold grows
    with every large free), so without this a worker stays at its peak after a burst of
    large uploads.
    """
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc: nothing to do
            _trim = False
    if _trim:
        _trim(0)


_trim = None
