"""Cropping boxes out of images, upright and in RGB."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd
from PIL import ExifTags, Image, ImageOps

from flows.openimages import MIN_BOX_PIXELS
from model.atomic import write_bytes

BOX_FIELDS = ["BoxID", "ImageID", "Class", "XMin", "XMax", "YMin", "YMax"]
# A box as crop_image takes it: the BOX_FIELDS values in that order (a tuple, or a list after JSON).
BoxRecord = Sequence
# What crops look like; part of the key that decides whether an earlier crop can be reused.
CROP_FORMAT = 2
# The model resizes crops again, so a cheap antialiased filter is enough: area averaging (BOX)
# to shrink, 2-4x cheaper than LANCZOS; BICUBIC to enlarge (only where a region on a scaled
# decode rounds to a pixel short of min_detail).
_SHRINK = Image.Resampling.BOX
_ENLARGE = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class CropOptions:
    """How boxes become training images."""

    size: int = 256  # the longest side a crop may have, aspect kept
    min_pixels: int = MIN_BOX_PIXELS  # a box narrower or shorter than this is skipped
    padding: float = 0.0  # fraction of the box added on every side
    quality: int = 90
    draft: bool = True  # let the JPEG decoder downscale when every crop shrinks a lot
    # How far below its own size, min(box, size), a crop may come out when that saves work: a
    # decode the JPEG decoder scales down, and a crop taken by exact k x k averaging instead of
    # resampling to the size. 1.0: every crop is exactly its box's thumbnail size; 0.75: a
    # 256 px crop has 192 to 256 px, more than the model's 150 px input. Any value above 1/2
    # keeps every stored pixel of a box smaller than size.
    min_detail: float = 0.75

    def __post_init__(self) -> None:
        if not 0.5 < self.min_detail <= 1.0:
            raise ValueError(f"min_detail must be in (0.5, 1], got {self.min_detail}")


def upright(image: Image.Image, rotation: float | None) -> Image.Image:
    """Turn a stored image the way Open Images' boxes were drawn on it.

    Rotation is the counterclockwise angle published with the image; where it is missing the
    file's own EXIF orientation is the best evidence left.
    """
    if rotation is None or math.isnan(float(rotation)):
        # exif_transpose copies even an upright image; skip it when there is nothing to turn.
        if _orientation(image) in (None, 1):
            return image
        return ImageOps.exif_transpose(image)
    if int(rotation) % 360:
        return image.rotate(rotation, expand=True)
    return image


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag (1 upright, 2-8 flipped or turned), read without decoding."""
    return image.getexif().get(ExifTags.Base.Orientation)


def _upright_size(image: Image.Image, rotation: float | None) -> tuple[int, int] | None:
    """The size upright() will give a stored image, or None for a turn other than 90 degrees."""
    if rotation is None or math.isnan(float(rotation)):
        turned = _orientation(image) in (5, 6, 7, 8)  # the transposing orientations
    elif float(rotation) % 90:
        return None  # the canvas grows with the angle; such images are decoded in full
    else:
        turned = int(rotation) % 180 == 90
    return (image.height, image.width) if turned else image.size


def pixel_box(
    width: int, height: int, box: tuple[float, float, float, float], padding: float = 0.0
) -> tuple[int, int, int, int]:
    """Map a relative (XMin, XMax, YMin, YMax) box to clipped pixel (left, top, right, bottom)."""
    xmin, xmax, ymin, ymax = box
    pad_x, pad_y = (xmax - xmin) * padding, (ymax - ymin) * padding
    left = max(0, math.floor((xmin - pad_x) * width))
    right = min(width, math.ceil((xmax + pad_x) * width))
    top = max(0, math.floor((ymin - pad_y) * height))
    bottom = min(height, math.ceil((ymax + pad_y) * height))
    return left, top, right, bottom


def draft_size(stored: tuple[int, int], longest: list[int],
               options: CropOptions) -> tuple[int, int] | None:
    """The smallest decode size every crop allows, or None to decode in full.

    longest holds each crop's longest side in stored pixels. JPEG decoders can scale by 1/2,
    1/4 or 1/8 while decoding (DCT scaling), several times faster than decoding in full and
    shrinking afterwards. A crop of a box n pixels long is min(n, size) pixels; it must get at
    least min_detail of those from the decode.
    """
    # The box that shrinks least binds; with no crop to make, decode small just to check the file.
    scale = max((options.min_detail * min(n, options.size) / n for n in longest if n),
                default=0.0)
    if scale > 0.5:
        return None
    return max(1, math.ceil(stored[0] * scale)), max(1, math.ceil(stored[1] * scale))


def _fit(width: int, height: int, size: int) -> tuple[int, int]:
    """The size thumbnail((size, size)) gives a width x height image: aspect kept, rounded alike."""
    if width <= size and height <= size:
        return width, height
    aspect = width / height
    if aspect <= 1:  # tall: the height becomes size
        exact = size * aspect
        return max(1, min(math.floor(exact), math.ceil(exact),
                          key=lambda n: abs(aspect - n / size))), size
    exact = size / aspect
    return size, max(1, min(math.floor(exact), math.ceil(exact),
                            key=lambda n: abs(aspect - size / n) if n else 0))


def box_records(boxes: pd.DataFrame) -> list[tuple]:
    """The boxes as plain tuples of BOX_FIELDS: pandas row access costs as much as a crop."""
    return list(zip(*(boxes[field].tolist() for field in BOX_FIELDS), strict=True))


def records_by_image(boxes: pd.DataFrame) -> dict[str, list[tuple]]:
    """The box records of each ImageID, in one pass over the table (a groupby costs more)."""
    by_image: dict[str, list[tuple]] = {}
    for record in box_records(boxes):
        by_image.setdefault(record[1], []).append(record)
    return by_image


def _decode(image_path: Path | BinaryIO, rotation: float | None, records: Sequence[BoxRecord],
            options: CropOptions) -> tuple[Image.Image, tuple[int, int], float]:
    """The upright RGB image decoded as small as the crops allow, its full upright size, and
    the decode's scale (1, 1/2, 1/4 or 1/8)."""
    scale = 1.0
    with Image.open(image_path) as raw:
        stored, full = raw.size, _upright_size(raw, rotation)
        if options.draft and full:
            boxes = (pixel_box(*full, r[3:], options.padding) for r in records)
            longest = [max(right - left, bottom - top) for left, top, right, bottom in boxes
                       if min(right - left, bottom - top) >= options.min_pixels]
            if (size := draft_size(stored, longest, options)) and (
                    drafted := raw.draft(None, size)):
                # drafted holds the full image's extent on the decoded one: exactly 1/k of the
                # stored size, where the decoded size is rounded up to whole pixels.
                scale = drafted[1][2] / stored[0]
        image = upright(raw, rotation)
        if image.mode != "RGB":
            image = image.convert("RGB")
        image.load()  # while the file is open: image may still be raw, not yet decoded
    return image, full or image.size, scale


def _resample(image: Image.Image, region: tuple[float, float, float, float],
              size: tuple[int, int]) -> Image.Image:
    """The region of image (float pixel edges) at size pixels."""
    if (region[2] - region[0], region[3] - region[1]) == size and all(
            edge == int(edge) for edge in region):
        return image.crop(region)  # whole pixels at full resolution: nothing to resample
    # No reducing_gap: Image.reduce first would leave BOX a ratio near 1, where it aliases.
    return image.resize(size, _SHRINK if size[0] < region[2] - region[0] else _ENLARGE, box=region)


def crop_window(box: tuple[int, int, int, int], scale: float, decoded: tuple[int, int],
                options: CropOptions) -> tuple[tuple[int, int, int, int], int] | None:
    """Where min_detail allows, the region of a decode (at scale) to take a stored-pixel box's
    crop from, and the whole factor k to average it by; None to resample to the exact size.

    The region is the box on the decode's pixel grid, trimmed by less than k decoded pixels
    so that k x k blocks tile it: the crop is then an exact area average (Image.reduce,
    about 4x cheaper than resampling), not shifted against the box by a partial block.
    """
    if options.min_detail >= 1:
        return None
    left, top, right, bottom = box
    target = min(max(right - left, bottom - top), options.size)
    edges = [min(max(round(edge * scale), 0), limit)
             for edge, limit in zip(box, decoded * 2, strict=True)]
    width, height = max(edges[2] - edges[0], 1), max(edges[3] - edges[1], 1)
    k = -(-max(width, height) // target)  # the least whole factor that fits size
    if max(width, height) // k < options.min_detail * target or min(width, height) < k:
        return None
    # Trim each side to whole blocks, half the spare pixels on either edge.
    x, y = edges[0] + width % k // 2, edges[1] + height % k // 2
    return (x, y, x + width // k * k, y + height // k * k), k


def _shrink(image: Image.Image, box: tuple[int, int, int, int], scale: float,
            options: CropOptions) -> Image.Image:
    """The crop of a stored-pixel box from an image decoded at scale."""
    if window := crop_window(box, scale, image.size, options):
        region, k = window
        return image.reduce(k, box=region) if k > 1 else image.crop(region)
    left, top, right, bottom = box
    return _resample(image, (left * scale, top * scale, right * scale, bottom * scale),
                     _fit(right - left, bottom - top, options.size))


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def crop_image(image_path: Path | BinaryIO, rotation: float | None,
               boxes: Sequence[BoxRecord], out_dir: Path | str | None, options: CropOptions,
               keep_bytes: bool = False) -> list[dict]:
    """Crop every box of one image (records of BOX_FIELDS) into out_dir (None: no files);
    return a row per box with its outcome, and with keep_bytes the JPEG ("Image")."""
    try:
        image, full, scale = _decode(image_path, rotation, boxes, options)
    except Exception as error:  # noqa: BLE001 - a bad image is recorded, the run goes on
        return [{"BoxID": r[0], "Status": "unreadable", "Error": str(error)} for r in boxes]
    rows = []
    for box_id, image_id, name, xmin, xmax, ymin, ymax in boxes:
        # Boxes, minimum sizes and crop sizes are judged at the stored resolution.
        box = pixel_box(*full, (xmin, xmax, ymin, ymax), options.padding)
        if min(box[2] - box[0], box[3] - box[1]) < options.min_pixels:
            rows.append({"BoxID": box_id, "Status": "too-small", "Error": ""})
            continue
        crop = _shrink(image, box, scale, options)
        # Plain strings: pathlib costs more per crop than writing the file's bytes.
        relative = f"{name}/{image_id}_{box_id}.jpg"
        data = _jpeg(crop, options.quality)
        if out_dir is not None:
            write_bytes(os.path.join(out_dir, relative), data)
        rows.append({"BoxID": box_id, "Status": "ok", "Error": "", "CropPath": relative,
                     "Width": crop.width, "Height": crop.height,
                     **({"Image": data} if keep_bytes else {})})
    return rows
