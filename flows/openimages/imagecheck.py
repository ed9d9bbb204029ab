"""Checks that a downloaded file is the image it should be, before it enters the store."""

from __future__ import annotations

import base64
import hashlib
import io
import math
from pathlib import Path

from PIL import Image

# JPEGs decode at 1/8 scale: libjpeg still reads every entropy-coded byte, so a truncated or
# corrupt scan fails as it would at full size, for about half the CPU.
DRAFT_SCALE = 8


class BadImage(Exception):
    """The bytes are not a complete, decodable image, or not the published ones."""


def decode_check(path: Path, body: bytes | None = None) -> str:
    """Decode the file, or its bytes when given (JPEGs in draft mode); return its format or
    raise BadImage."""
    try:
        with Image.open(io.BytesIO(body) if body is not None else path) as image:
            if image.format == "JPEG":
                image.draft(None, (max(1, image.width // DRAFT_SCALE),
                                   max(1, image.height // DRAFT_SCALE)))
            image.load()
            return image.format or "?"
    except Exception as error:  # Pillow raises many kinds for bad bytes
        raise BadImage(f"not a decodable image ({type(error).__name__}: {error})") from error


def md5_base64(hex_digest: str) -> str:
    """An MD5 hex digest in the base64 form Open Images publishes (OriginalMD5)."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def file_md5(path: Path, block: int = 1 << 20) -> str:
    """The MD5 hex digest of a file."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while data := handle.read(block):
            digest.update(data)
    return digest.hexdigest()


def published(value: object) -> bool:
    """Whether a metadata value is present (not None, NaN or empty)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value).strip() != ""


def check_original(size: int, md5_hex: str, original_size: object,
                   original_md5: object) -> None:
    """Raise BadImage unless size and MD5 match the published OriginalSize and OriginalMD5."""
    if published(original_size) and int(float(original_size)) != size:  # type: ignore[arg-type]
        raise BadImage(f"size {size} differs from OriginalSize {int(float(original_size))}")
    if published(original_md5) and md5_base64(md5_hex) != str(original_md5).strip():
        raise BadImage(f"md5 {md5_base64(md5_hex)} differs from OriginalMD5 {original_md5}")
