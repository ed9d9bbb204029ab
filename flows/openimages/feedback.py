"""Served images that a person labelled (the service's kept images plus feedback rows) as
extra training crops: the whole image is the crop, resized like the box crops, train split
only, Source "feedback", in shards of their own. Their licence is unknown, so they are kept
out of published data."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps

from flows.openimages.shards import shard_bytes, write_shard

FEEDBACK = "feedback"
OPEN_IMAGES = "openimages"
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}


def labelled_images(log: pd.DataFrame, feedback: pd.DataFrame, images_dir: Path,
                    classes: list[str]) -> pd.DataFrame:
    """One row per kept image whose latest feedback label is one of classes: sha256, Class
    (spelt as in classes), path. Labels of other classes and missing images are dropped."""
    if log.empty or feedback.empty:
        return pd.DataFrame({"sha256": [], "Class": [], "path": []})
    names = {c.lower(): c for c in classes}
    latest = feedback.sort_values("time").drop_duplicates("request_id", keep="last")
    joined = latest.merge(log[log.kept][["request_id", "sha256", "format"]], on="request_id")
    joined["Class"] = joined.label.str.lower().map(names)
    joined["path"] = [images_dir / f"{sha}.{EXTENSIONS.get(fmt, str(fmt).lower())}"
                      for sha, fmt in zip(joined.sha256, joined.format, strict=True)]
    joined = joined[joined.Class.notna() & joined.path.map(Path.exists)]
    rows = joined.sort_values("time").drop_duplicates("sha256", keep="last")
    return rows[["sha256", "Class", "path"]].reset_index(drop=True)


def _crop(source: Path, size: int, quality: int) -> tuple[bytes, int, int]:
    """The whole image as a crop: upright RGB, at most size px, JPEG bytes and size."""
    with Image.open(source) as image:
        crop = ImageOps.exif_transpose(image).convert("RGB")
    crop.thumbnail((size, size))
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), crop.width, crop.height


def add_feedback(table: pd.DataFrame, images: pd.DataFrame, shard_dir: Path, size: int,
                 quality: int = 90) -> pd.DataFrame:
    """table with a Source column and a train row per labelled image, their crops written
    into one shard of their own under shard_dir (feedback-<hash>.parquet)."""
    table = table.assign(Source=OPEN_IMAGES)
    if images.empty:
        return table
    mids = table.drop_duplicates("Class").set_index("Class").ClassMID.to_dict()
    rows, crops = [], []
    for image in images.itertuples():
        data, width, height = _crop(image.path, size, quality)
        mid = mids.get(image.Class)
        crops.append(data)
        rows.append({"CropPath": f"{FEEDBACK}/{image.Class}/{image.sha256}.jpg",
                     "Class": image.Class, "ClassMID": mid,
                     "LabelName": mid, "ImageID": f"{FEEDBACK}-{image.sha256}",
                     "BoxID": f"{FEEDBACK}-{image.sha256}", "Split": "train",
                     "XMin": 0.0, "XMax": 1.0, "YMin": 0.0, "YMax": 1.0,
                     "Width": width, "Height": height, "CropKey": image.sha256,
                     "Row": len(rows), "Source": FEEDBACK})
    shard = write_shard(shard_dir, shard_bytes(rows, crops), prefix=FEEDBACK)
    added = pd.DataFrame(rows).assign(Shard=shard)
    return pd.concat([table, added], ignore_index=True)


def without_feedback(dataset_dir: Path, dest: Path) -> Path:
    """A copy of dataset_dir at dest (hard links where the file system allows) without the
    feedback crops and rows: what is published unless publish_feedback is on."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(dataset_dir, dest, copy_function=link,
                    ignore=lambda folder, names: [n for n in names if n.startswith(FEEDBACK)])
    table_path = dest / "crops.parquet"
    table = pd.read_parquet(table_path)
    table_path.unlink()  # a hard link: never write through it
    if "Source" in table:
        table = table[table.Source != FEEDBACK].reset_index(drop=True)
    table.to_parquet(table_path, index=False)
    return dest
