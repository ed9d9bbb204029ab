"""Cropping boxes out of images, upright and in RGB, and splitting by source image."""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from flows.atomic import atomic_path

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class CropOptions:
    """How boxes become training images."""

    size: int = 256  # longest side of a crop, aspect kept
    min_pixels: int = 8  # a box narrower or shorter than this on the image is skipped
    padding: float = 0.0  # fraction of the box added on every side
    quality: int = 90


def upright(image: Image.Image, rotation: float | None) -> Image.Image:
    """Turn a stored image the way Open Images' boxes were drawn on it.

    Rotation is the counterclockwise angle published with the image; where it is missing the
    file's own EXIF orientation is the best evidence left.
    """
    if rotation is None or math.isnan(float(rotation)):
        return ImageOps.exif_transpose(image)
    if int(rotation) % 360:
        return image.rotate(rotation, expand=True)
    return image


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


def crop_image(image_path: Path, rotation: float | None, boxes: pd.DataFrame, out_dir: Path,
               options: CropOptions) -> list[dict]:
    """Crop every box of one image; return a row per box with its outcome."""
    rows = []
    try:
        with Image.open(image_path) as raw:
            image = upright(raw, rotation).convert("RGB")
    except Exception as error:  # noqa: BLE001 - a bad image is recorded, the run goes on
        return [{"BoxID": b.BoxID, "Status": "unreadable", "Error": str(error)}
                for b in boxes.itertuples()]
    for box in boxes.itertuples():
        left, top, right, bottom = pixel_box(
            image.width, image.height, (box.XMin, box.XMax, box.YMin, box.YMax), options.padding
        )
        if right - left < options.min_pixels or bottom - top < options.min_pixels:
            rows.append({"BoxID": box.BoxID, "Status": "too-small", "Error": ""})
            continue
        crop = image.crop((left, top, right, bottom))
        crop.thumbnail((options.size, options.size), Image.Resampling.LANCZOS)
        dest = out_dir / box.Class / f"{box.ImageID}_{box.BoxID}.jpg"
        with atomic_path(dest) as tmp:
            crop.save(tmp, format="JPEG", quality=options.quality)
        rows.append({"BoxID": box.BoxID, "Status": "ok", "Error": "",
                     "CropPath": str(dest.relative_to(out_dir)),
                     "Width": crop.width, "Height": crop.height})
    return rows


def _crop_chunk(chunk: list[tuple[str, float | None, pd.DataFrame]], out_dir: Path,
                options: CropOptions) -> list[dict]:
    return [row for path, rot, boxes in chunk
            for row in crop_image(Path(path), rot, boxes, out_dir, options)]


def assign_split(image_ids: pd.Series, seed: int, validation: float, test: float) -> pd.Series:
    """Split by source image from a seeded hash, so an image never changes split as data grows."""
    def split(image_id: str) -> str:
        digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        return "test" if u < test else "validation" if u < test + validation else "train"

    return image_ids.map(split)


def crop_boxes(boxes: pd.DataFrame, manifest: pd.DataFrame, out_dir: Path,
               options: CropOptions, workers: int = 2, chunk_size: int = 64) -> pd.DataFrame:
    """Crop all boxes whose image downloaded; return the crops table (one row per box)."""
    ok = manifest[manifest.Status == "ok"].set_index("ImageID").Path
    boxes = boxes[boxes.ImageID.isin(ok.index)]
    work = [(ok[image_id], group.Rotation.iloc[0], group)
            for image_id, group in boxes.groupby("ImageID", sort=True)]
    chunks = [work[i:i + chunk_size] for i in range(0, len(work), chunk_size)]
    outcomes: list[dict] = []
    # spawn, not fork: the caller may already hold TensorFlow or Prefect threads.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool, tqdm(
        total=len(work), desc="crop", unit="img", disable=not work
    ) as bar:
        for chunk, rows in zip(chunks, pool.map(_crop_chunk, chunks,
                                                [out_dir] * len(chunks),
                                                [options] * len(chunks)), strict=True):
            outcomes.extend(rows)
            bar.update(len(chunk))
    table = boxes.merge(pd.DataFrame(outcomes, columns=["BoxID", "Status", "Error", "CropPath",
                                                        "Width", "Height"]), on="BoxID")
    return table.reset_index(drop=True)
