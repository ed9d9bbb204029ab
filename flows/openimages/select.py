"""Selecting the boxes of the requested classes, with their images' info."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from flows.openimages.metadata import read_boxes, read_images
from flows.openimages.ontology import Ontology, label_map


@dataclass(frozen=True)
class Filters:
    """Which boxes count as examples of a class."""

    include_subclasses: bool = True
    exclude_depictions: bool = True
    exclude_group_of: bool = True
    max_images_per_class: int | None = None


def box_id(row: pd.Series) -> str:
    """A stable id for a box: the same box gets the same id in every selection."""
    coords = "|".join(f"{v:.6f}" for v in (row.XMin, row.XMax, row.YMin, row.YMax))
    key = f"{row.ImageID}|{row.LabelName}|{coords}"
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def select_boxes(
    box_files: dict[str, Path],
    image_files: dict[str, Path],
    ontology: Ontology,
    classes: list[str],
    filters: Filters,
) -> pd.DataFrame:
    """Return one row per selected box, labelled with its most specific requested class."""
    requested = [ontology.resolve(name) for name in classes]
    mapping = label_map(ontology, requested, filters.include_subclasses)
    frames = []
    for split, path in box_files.items():
        boxes = read_boxes(path, sorted(mapping)).to_pandas()
        boxes["Subset"] = split
        frames.append(boxes)
    boxes = pd.concat(frames, ignore_index=True)
    if filters.exclude_depictions:
        boxes = boxes[boxes.IsDepiction != 1]
    if filters.exclude_group_of:
        boxes = boxes[boxes.IsGroupOf != 1]
    boxes = boxes.assign(
        ClassMID=boxes.LabelName.map(mapping),
    )
    boxes["Class"] = boxes.ClassMID.map(ontology.name)
    if filters.max_images_per_class is not None:
        boxes = _cap_images(boxes, filters.max_images_per_class)
    ids = pa.array(sorted(boxes.ImageID.unique()), pa.string())
    info = pd.concat(
        [read_images(path, ids).to_pandas() for path in image_files.values()], ignore_index=True
    ).drop_duplicates("ImageID")
    boxes = boxes.merge(info.drop(columns=["Subset"]), on="ImageID", how="inner")
    boxes["BoxID"] = boxes.apply(box_id, axis=1) if len(boxes) else pd.Series(dtype=str)
    return boxes.sort_values(["ImageID", "BoxID"]).reset_index(drop=True)


def _cap_images(boxes: pd.DataFrame, limit: int) -> pd.DataFrame:
    """Keep the boxes of at most limit images per class, chosen by ImageID order."""
    keep = (
        boxes[["Class", "ImageID"]].drop_duplicates().sort_values(["Class", "ImageID"])
        .groupby("Class").head(limit)
    )
    return boxes.merge(keep, on=["Class", "ImageID"])


def images_of(boxes: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct image of a selection: each image is downloaded once."""
    cols = ["ImageID", "Subset", "OriginalURL", "Thumbnail300KURL", "OriginalSize",
            "OriginalMD5", "Rotation"]
    return boxes[cols].drop_duplicates("ImageID").reset_index(drop=True)
