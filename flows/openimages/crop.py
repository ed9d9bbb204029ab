"""Cropping boxes out of images, upright and in RGB."""

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


@dataclass(frozen=True)
class CropOptions:
    """How boxes become training images."""

    size: int = 256  # longest side of a crop, aspect kept
    min_pixels: int = 8  # a box narrower or shorter than this on the image is skipped
    padding: float = 0.0  # fraction of the box added on every side
    quality: int = 90
    draft: bool = True  # let the JPEG decoder downscale when every crop shrinks a lot


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


def draft_size(size: tuple[int, int], boxes: pd.DataFrame, rotation: float | None,
               target: int) -> tuple[int, int] | None:
    """The smallest decode size that keeps every box at least target pixels, or None.

    JPEG decoders can scale by 1/2, 1/4 or 1/8 while decoding (DCT scaling), several times
    faster than decoding in full and shrinking afterwards.
    """
    width, height = size
    if rotation is not None and not math.isnan(float(rotation)) and int(rotation) % 180 == 90:
        width, height = height, width  # boxes are relative to the upright image
    # The smallest box binds: every crop must still come out at least target pixels.
    longest = min(max((b.XMax - b.XMin) * width, (b.YMax - b.YMin) * height)
                  for b in boxes.itertuples())
    scale = target / longest if longest else 1.0
    if scale > 0.5:
        return None
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


def crop_image(image_path: Path, rotation: float | None, boxes: pd.DataFrame, out_dir: Path,
               options: CropOptions) -> list[dict]:
    """Crop every box of one image; return a row per box with its outcome."""
    rows = []
    try:
        with Image.open(image_path) as raw:
            full = raw.size
            if options.draft and (size := draft_size(full, boxes, rotation, options.size)):
                raw.draft(None, size)
            image = upright(raw, rotation).convert("RGB")
    except Exception as error:  # noqa: BLE001 - a bad image is recorded, the run goes on
        return [{"BoxID": b.BoxID, "Status": "unreadable", "Error": str(error)}
                for b in boxes.itertuples()]
    # Minimum sizes are judged at the stored resolution, whatever the decode scale.
    scale = max(image.size) / max(full)  # the longest side does not change with rotation
    for box in boxes.itertuples():
        left, top, right, bottom = pixel_box(
            image.width, image.height, (box.XMin, box.XMax, box.YMin, box.YMax), options.padding
        )
        if min(right - left, bottom - top) < options.min_pixels * scale:
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


def crop_key(options: CropOptions, image_bytes: int) -> str:
    """What a crop depends on besides its box: the options and the source file."""
    return hashlib.sha1(f"{options}|{image_bytes}".encode()).hexdigest()[:12]


def crop_boxes(boxes: pd.DataFrame, manifest: pd.DataFrame, out_dir: Path,
               options: CropOptions, workers: int = 2, chunk_size: int = 64,
               previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """Crop all boxes whose image downloaded; return the crops table (one row per box).

    Rows of a previous table whose crop file exists and whose options and source image are
    unchanged are kept as they are: a rerun crops only what is missing or changed.
    """
    ok = manifest[manifest.Status == "ok"].set_index("ImageID")
    boxes = boxes[boxes.ImageID.isin(ok.index)].copy()
    sizes = ok.Bytes if "Bytes" in ok else pd.Series(0, index=ok.index)
    boxes["CropKey"] = [crop_key(options, int(sizes[i])) for i in boxes.ImageID]
    kept = _reusable(boxes, previous, out_dir)
    todo = boxes[~boxes.BoxID.isin(kept.BoxID)]
    work = [(ok.Path[image_id], group.Rotation.iloc[0], group)
            for image_id, group in todo.groupby("ImageID", sort=True)]
    chunks = [work[i:i + chunk_size] for i in range(0, len(work), chunk_size)]
    outcomes: list[dict] = kept.to_dict("records")
    if chunks:
        # spawn, not fork: the caller may already hold TensorFlow or Prefect threads.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool, tqdm(
            total=len(work), desc="crop", unit="img"
        ) as bar:
            for chunk, rows in zip(chunks, pool.map(_crop_chunk, chunks, [out_dir] * len(chunks),
                                                    [options] * len(chunks)), strict=True):
                outcomes.extend(rows)
                bar.update(len(chunk))
    columns = ["BoxID", "Status", "Error", "CropPath", "Width", "Height"]
    table = boxes.merge(pd.DataFrame(outcomes, columns=columns), on="BoxID")
    return table.reset_index(drop=True)


def _reusable(boxes: pd.DataFrame, previous: pd.DataFrame | None, out_dir: Path) -> pd.DataFrame:
    """Outcome rows of the previous table that still hold for these boxes."""
    columns = ["BoxID", "Status", "Error", "CropPath", "Width", "Height"]
    if previous is None or "CropKey" not in previous or previous.empty:
        return pd.DataFrame(columns=columns)
    # The saved table holds usable crops only, without the outcome columns.
    same = previous.merge(boxes[["BoxID", "CropKey"]], on=["BoxID", "CropKey"]).assign(
        Status="ok", Error="")
    exists = same.CropPath.map(lambda p: isinstance(p, str) and (out_dir / p).exists()).astype(bool)
    return same[exists][columns].reset_index(drop=True)
