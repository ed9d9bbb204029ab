"""The training dataset: crops plus a table that says where each came from and its split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from flows.atomic import write_parquet
from flows.openimages.crop import CropOptions, assign_split, crop_boxes

CROPS_TABLE = "crops.parquet"
TABLE_COLUMNS = ["CropPath", "Class", "ClassMID", "LabelName", "ImageID", "BoxID", "Split",
                 "XMin", "XMax", "YMin", "YMax", "IsOccluded", "IsTruncated", "IsInside",
                 "Rotation", "Width", "Height", "Author", "License", "OriginalLandingURL"]


def dataset_id(table: pd.DataFrame) -> str:
    """A content hash of the crops table: equal ids mean the same examples and splits."""
    key = table[["CropPath", "Class", "Split"]].sort_values("CropPath").to_csv(index=False)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def build_dataset(
    boxes: pd.DataFrame,
    manifest: pd.DataFrame,
    out_dir: Path,
    options: CropOptions,
    seed: int = 0,
    validation: float = 0.15,
    test: float = 0.15,
    workers: int = 2,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Crop the selection into out_dir/crops; return (usable crops table, skipped boxes)."""
    crops = crop_boxes(boxes, manifest, out_dir / "crops", options, workers=workers)
    crops["Split"] = assign_split(crops.ImageID, seed, validation, test)
    usable = crops[crops.Status == "ok"][TABLE_COLUMNS].reset_index(drop=True)
    skipped = crops[crops.Status != "ok"][["ImageID", "BoxID", "Class", "Status", "Error"]]
    write_parquet(out_dir / CROPS_TABLE, usable)
    write_parquet(out_dir / "selection.parquet", boxes)
    return usable, skipped.reset_index(drop=True)
