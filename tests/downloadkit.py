"""Small distinct images served like Open Images (S3 path-style and Flickr-style URLs)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from flows.openimages.imagecheck import md5_base64

BUCKET = "open-images-dataset"


def jpeg(number: int, mode: str = "RGB", size: tuple[int, int] = (96, 64)) -> bytes:
    """A small JPEG that differs for every number."""
    image = Image.new(mode, size, (number * 37) % 256 if mode == "L" else
                      ((number * 37) % 256, (number * 91) % 256, (number * 13) % 256))
    ImageDraw.Draw(image).text((4, 4), str(number), fill=255 if mode == "L" else (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def palette_png(number: int) -> bytes:
    """A genuine palette ("P" mode) PNG, which is not Flickr's placeholder."""
    image = Image.new("P", (80, 60), number % 200)
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (i * 7) % 256)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def image_id(number: int) -> str:
    return f"{number:016x}"


def catalog(bodies: dict[str, bytes], subset: str = "train") -> dict[str, bytes]:
    """Server paths for each image id: the CVDF bucket key, the original and the thumbnail."""
    files = {}
    for key, body in bodies.items():
        files[f"/{BUCKET}/{subset}/{key}.jpg"] = body
        files[f"/original/{key}.jpg"] = body
        files[f"/thumb/{key}.jpg"] = body
    return files


def image_table(url: str, bodies: dict[str, bytes], subset: str = "train",
                published: bool = True) -> pd.DataFrame:
    """Image-info rows as images_of() gives them, pointing at the server at url."""
    return pd.DataFrame([{
        "ImageID": key, "Subset": subset, "OriginalURL": f"{url}/original/{key}.jpg",
        "Thumbnail300KURL": f"{url}/thumb/{key}.jpg",
        "OriginalSize": len(body) if published else None,
        "OriginalMD5": md5_base64(hashlib.md5(body).hexdigest()) if published else None,
        "Rotation": 0.0} for key, body in bodies.items()])


def store_files(store: Path) -> dict[str, bytes]:
    """Every file in the store's image folders, by relative path."""
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(store).parts)
            and p.name != "manifest.parquet"}


def decodes(body: bytes) -> bool:
    """Whether bytes decode fully as an image."""
    try:
        with Image.open(io.BytesIO(body)) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any failure means no
        return False
