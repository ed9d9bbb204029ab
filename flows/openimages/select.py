"""Selecting the boxes of the requested classes, filtered and limited, with their images' info."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flows.openimages.csvread import image_keys
from flows.openimages.ontology import Ontology, label_map

FlagRule = Literal["any", "exclude", "only"]
FLAG_COLUMNS = {"depiction": "IsDepiction", "group_of": "IsGroupOf", "occluded": "IsOccluded",
                "truncated": "IsTruncated", "inside": "IsInside"}
IMAGE_INFO = ["ImageID", "OriginalURL", "OriginalLandingURL", "Thumbnail300KURL", "Rotation",
              "OriginalMD5", "OriginalSize", "License", "Author", "AuthorProfileURL"]


class EmptySelection(ValueError):
    """No box passed the class selection and filters."""


class Source(Protocol):
    """Where boxes and image info come from (the cache, or the CSVs streamed)."""

    def boxes(self, mids: list[str]) -> dict[str, pa.Table]: ...

    def images(self, image_ids: pa.Array) -> pa.Table: ...


@dataclass(frozen=True)
class Filters:
    """Which boxes count as examples of a class, and how many images per class to keep.

    Flag rules: "exclude" drops boxes flagged 1 (keeping 0 and -1, unknown), "only" keeps just
    boxes flagged 1, "any" keeps all.
    """

    include_subclasses: bool = True
    relabel: bool = True  # subclass boxes take the requested class's name
    exclude_classes: tuple[str, ...] = ()
    depiction: FlagRule = "exclude"
    group_of: FlagRule = "exclude"
    occluded: FlagRule = "any"
    truncated: FlagRule = "any"
    inside: FlagRule = "any"
    source: Literal["any", "xclick", "activemil"] = "any"
    min_box_fraction: float = 0.0  # of the image's width and of its height
    max_images_per_class: int | None = None
    balance: bool = False  # cap every class at the image count of the smallest
    seed: int = 0


def _filter(table: pa.Table, filters: Filters) -> pa.Table:
    mask = pa.array(np.ones(table.num_rows, dtype=bool))
    for option, column in FLAG_COLUMNS.items():
        rule = getattr(filters, option)
        flag = pc.fill_null(table[column], -1)  # an empty field is as unknown as -1
        if rule == "exclude":
            mask = pc.and_(mask, pc.not_equal(flag, 1))
        elif rule == "only":
            mask = pc.and_(mask, pc.equal(flag, 1))
    if filters.source != "any":
        mask = pc.and_(mask, pc.equal(table["Source"], filters.source))
    if filters.min_box_fraction > 0:
        wide = pc.greater_equal(pc.subtract(table["XMax"], table["XMin"]), filters.min_box_fraction)
        tall = pc.greater_equal(pc.subtract(table["YMax"], table["YMin"]), filters.min_box_fraction)
        mask = pc.and_(mask, pc.and_(wide, tall))
    return table.filter(mask)


def seeded_order(image_ids: pd.Series, seed: int) -> np.ndarray:
    """A pseudo-random but reproducible rank per image, from its id and the seed."""
    salt = np.uint64(int.from_bytes(hashlib.sha256(str(seed).encode()).digest()[:8], "big"))
    x = image_keys(pa.array(image_ids, pa.string())) ^ salt
    # splitmix64 finaliser: spreads nearby ids over the whole range.
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def limit_images(boxes: pd.DataFrame, limit: int | None, balance: bool, seed: int
                 ) -> pd.DataFrame:
    """Keep whole images, in seeded order, until every class has limit images.

    An image holding two selected classes counts for both, so a class can pass its limit by
    the images it shares with a class that still needed them.
    """
    per_class = boxes.groupby("Class").ImageID.nunique()
    if balance:
        limit = min(limit or math.inf, int(per_class.min()))
    if limit is None or limit >= per_class.max():
        return boxes
    pairs = boxes[["ImageID", "Class"]].drop_duplicates()
    classes_of = pairs.groupby("ImageID").Class.agg(tuple)
    ranked = classes_of.iloc[np.argsort(seeded_order(classes_of.index.to_series(), seed))]
    counts = dict.fromkeys(per_class.index, 0)
    keep = []
    for image_id, classes in ranked.items():
        if any(counts[c] < limit for c in classes):
            keep.append(image_id)
            for c in classes:
                counts[c] += 1
    return boxes[boxes.ImageID.isin(keep)]


def select_boxes(source: Source, ontology: Ontology, classes: list[str],
                 filters: Filters) -> pd.DataFrame:
    """One row per selected box with its class and its image's info; raises EmptySelection."""
    requested = [ontology.resolve(name) for name in classes]
    excluded = [ontology.resolve(name) for name in filters.exclude_classes]
    mapping = label_map(ontology, requested, filters.include_subclasses, excluded)
    frames = []
    for split, table in source.boxes(sorted(mapping)).items():
        part = _filter(table, filters).to_pandas()
        part.insert(1, "Subset", split)
        frames.append(part)
    boxes = pd.concat(frames, ignore_index=True)
    boxes["ClassMID"] = boxes.LabelName.map(mapping) if filters.relabel else boxes.LabelName
    boxes["Class"] = boxes.ClassMID.map(ontology.name)
    boxes["LabelDisplayName"] = boxes.LabelName.map(ontology.name)
    if boxes.empty:
        raise EmptySelection(f"no boxes of {classes} pass the filters {filters}")
    boxes = limit_images(boxes, filters.max_images_per_class, filters.balance, filters.seed)
    ids = pa.array(np.sort(boxes.ImageID.unique()), pa.string())
    info = source.images(ids).to_pandas()[IMAGE_INFO].drop_duplicates("ImageID")
    boxes = boxes.merge(info, on="ImageID", how="left")
    boxes["BoxID"] = box_ids(boxes)
    return boxes.sort_values(["ImageID", "BoxID"]).reset_index(drop=True)


def box_ids(boxes: pd.DataFrame) -> pd.Series:
    """A stable id per box: the same box gets the same id in every selection."""
    keys = (boxes.ImageID + "|" + boxes.LabelName + "|" + boxes.XMin.map("{:.6f}".format) + "|"
            + boxes.XMax.map("{:.6f}".format) + "|" + boxes.YMin.map("{:.6f}".format) + "|"
            + boxes.YMax.map("{:.6f}".format))
    return keys.map(lambda k: hashlib.sha1(k.encode()).hexdigest()[:10])


def summary(boxes: pd.DataFrame) -> pd.DataFrame:
    """Boxes and images per class."""
    return boxes.groupby(["Class", "ClassMID"]).agg(
        boxes=("BoxID", "size"), images=("ImageID", "nunique")).reset_index()


def images_of(boxes: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct image of a selection: each image is downloaded once."""
    cols = ["ImageID", "Subset", "OriginalURL", "Thumbnail300KURL", "OriginalSize",
            "OriginalMD5", "Rotation"]
    return boxes[cols].drop_duplicates("ImageID").reset_index(drop=True)
