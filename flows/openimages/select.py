"""Selecting the boxes of the requested classes, filtered and limited, with their images' info.

The selection itself is pyarrow and numpy: importing pandas alone costs about as much as a
warm selection of a few classes, so it is loaded only for callers that want a DataFrame.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.openimages import arrow
from flows.openimages.boxid import box_id_text, box_numbers
from flows.openimages.csvread import image_keys
from flows.openimages.ontology import Ontology, label_map
from model.atomic import atomic_path

if TYPE_CHECKING:
    import pandas as pd

FlagRule = Literal["any", "exclude", "only"]
FLAG_COLUMNS = {"depiction": "IsDepiction", "group_of": "IsGroupOf", "occluded": "IsOccluded",
                "truncated": "IsTruncated", "inside": "IsInside"}
IMAGE_INFO = ["ImageID", "OriginalURL", "OriginalLandingURL", "Thumbnail300KURL", "Rotation",
              "OriginalMD5", "OriginalSize", "License", "Author", "AuthorProfileURL"]
BATCH_ROWS = 262_144
BOX_KEY = "BoxKey"  # the box id as a number: stored by the cache, else computed here


class EmptySelection(ValueError):
    """No box passed the class selection and filters."""


class Source(Protocol):
    """Where boxes and image info come from (the cache, or the CSVs streamed).

    boxes() may add a BoxKey column (see flows.openimages.boxid); it is computed when absent.
    A source whose lookups read only the rows asked for (the cache) says so with a true
    `indexed` attribute and has image_rows(keys): the info of each box's image, given the
    boxes' image keys (sorted), in their order, null where unknown. It is then asked a batch
    of boxes at a time, so the info of a big class's million images is never held at once.
    """

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
    mask = None
    for option, column in FLAG_COLUMNS.items():
        rule = getattr(filters, option)
        if rule == "any":
            continue
        # An empty field is as unknown as -1.
        flag = pc.fill_null(table[column], arrow.scalar(-1, table[column].type))
        if rule == "exclude":
            mask = _and(mask, pc.not_equal(flag, arrow.scalar(1)))
        elif rule == "only":
            mask = _and(mask, pc.equal(flag, arrow.scalar(1)))
    if filters.source != "any":
        mask = _and(mask, pc.equal(table["Source"], arrow.scalar(filters.source)))
    if filters.min_box_fraction > 0:
        least = arrow.scalar(float(filters.min_box_fraction))
        wide = pc.greater_equal(pc.subtract(table["XMax"], table["XMin"]), least)
        tall = pc.greater_equal(pc.subtract(table["YMax"], table["YMin"]), least)
        mask = _and(mask, pc.and_(wide, tall))
    # No rule, no copy: a filter copies every column even when it keeps every row.
    return table if mask is None else table.filter(mask)


def _and(mask: pa.ChunkedArray | None, more: pa.ChunkedArray) -> pa.ChunkedArray:
    return more if mask is None else pc.and_(mask, more)


def _mix(keys: np.ndarray, seed: int) -> np.ndarray:
    salt = np.uint64(int.from_bytes(hashlib.sha256(str(seed).encode()).digest()[:8], "big"))
    x = keys ^ salt
    # splitmix64 finaliser: spreads nearby ids over the whole range.
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def seeded_order(image_ids: pa.Array | pa.ChunkedArray | Sequence[str], seed: int) -> np.ndarray:
    """A pseudo-random but reproducible rank per image, from its id and the seed."""
    if not isinstance(image_ids, pa.Array | pa.ChunkedArray):
        image_ids = arrow.strings(image_ids)
    return _mix(image_keys(image_ids), seed)


def limit_images(image_ids: pa.ChunkedArray | pa.Array, classes: pa.ChunkedArray | pa.Array,
                 limit: int | None, balance: bool, seed: int) -> np.ndarray | None:
    """Which boxes to keep (a mask; None: all) so that whole images, in seeded order, are
    kept until every class has limit images.

    An image holding two selected classes counts for both, so a class can pass its limit by
    the images it shares with a class that still needed them.
    """
    codes = pc.dictionary_encode(classes)
    codes = codes.combine_chunks() if isinstance(codes, pa.ChunkedArray) else codes
    box_keys = image_keys(image_ids)
    pairs = np.unique(np.stack([box_keys, arrow.numpy(codes.indices).astype(np.uint64)]), axis=1)
    per_class = np.bincount(pairs[1].astype(np.int64), minlength=len(codes.dictionary))
    if balance:
        limit = min(limit or math.inf, int(per_class.min()))
    if limit is None or limit >= per_class.max():
        return None
    images, starts = np.unique(pairs[0], return_index=True)  # pairs are sorted by image
    classes_of = np.split(pairs[1].astype(np.int64), starts[1:])
    counts = [0] * len(per_class)
    keep = np.zeros(len(images), dtype=bool)
    # Sequential by nature (an image's classes decide the next one's fate), but only over
    # images, and only when a limit applies.
    for i in np.argsort(_mix(images, seed)).tolist():
        mine = classes_of[i].tolist()
        if any(counts[c] < limit for c in mine):
            keep[i] = True
            for c in mine:
                counts[c] += 1
    return np.isin(box_keys, images[keep])


def _lookup(values: pa.ChunkedArray | pa.Array, table: dict[str, str]) -> pa.Array:
    """values mapped through table, vectorised (every value must be a key)."""
    keys = arrow.strings(table)
    return pc.take(arrow.strings(table.values()),
                   pc.index_in(values, value_set=keys))


def _unique_info(info: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """The first row of each image (as pandas' drop_duplicates keeps), sorted by ImageID key;
    and those keys."""
    keys = image_keys(info["ImageID"])
    if (keys[1:] > keys[:-1]).all():  # as the cache returns them: no copy of the largest part
        return info, keys
    keys, first = np.unique(keys, return_index=True)
    return info.take(arrow.array(first)), keys


def _join_info(boxes: pa.Table, wanted: np.ndarray, info: pa.Table, keys: np.ndarray
               ) -> pa.Table:
    """Append each box's image info (nulls when the image has none), keeping the box order;
    wanted are the boxes' image keys."""
    at = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    found = keys[at] == wanted if len(keys) else np.zeros(len(wanted), dtype=bool)
    rows = info.take(arrow.array(at.astype(np.int64), mask=~found))  # a null index takes a null row
    for name in IMAGE_INFO[1:]:
        boxes = boxes.append_column(name, rows[name])
    return boxes


def _boxes_of(source: Source, mids: list[str], filters: Filters) -> pa.Table:
    parts = []
    for split, table in source.boxes(mids).items():
        part = _filter(table, filters)
        if BOX_KEY not in part.column_names:
            part = part.append_column(BOX_KEY, arrow.array(box_numbers(part)))
        parts.append(part.add_column(1, "Subset", pa.repeat(arrow.scalar(split), part.num_rows)))
    return pa.concat_tables(parts) if parts else pa.table({})


def _in_order(image: np.ndarray, box: np.ndarray) -> bool:
    """Whether rows are sorted by image key, then box number (as the cache holds one class)."""
    later = image[1:] > image[:-1]
    return bool((later | ((image[1:] == image[:-1]) & (box[1:] >= box[:-1]))).all())


def select_batches(source: Source, ontology: Ontology, classes: list[str], filters: Filters,
                   rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """The selection in tables of up to rows boxes: one row per selected box with its class
    and its image's info, sorted by ImageID and BoxID; raises EmptySelection.

    The image info, repeated for every box of an image, is most of a selection's size, so it
    is joined a batch at a time: writing a class of 2 M boxes never holds all of it at once.
    """
    requested = [ontology.resolve(name) for name in classes]
    excluded = [ontology.resolve(name) for name in filters.exclude_classes]
    mapping = label_map(ontology, requested, filters.include_subclasses, excluded)
    names = {mid: ontology.name(mid) for mid in {*mapping.values(), *mapping}}
    boxes = _boxes_of(source, sorted(mapping), filters)
    if not boxes.num_rows:
        raise EmptySelection(f"no boxes of {classes} pass the filters {filters}")

    def class_mids(labels: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
        return _lookup(labels, mapping) if filters.relabel else labels

    if filters.max_images_per_class is not None or filters.balance:
        keep = limit_images(boxes["ImageID"], _lookup(class_mids(boxes["LabelName"]), names),
                            filters.max_images_per_class, filters.balance, filters.seed)
        boxes = boxes if keep is None else boxes.filter(arrow.array(keep))
    numbers, image = arrow.numpy(boxes[BOX_KEY]), image_keys(boxes["ImageID"])
    if not _in_order(image, numbers):
        order = np.lexsort((numbers, image))
        boxes, image = boxes.take(arrow.array(order)), image[order]
    labels = arrow.strings(sorted(mapping))
    label_class = arrow.strings([mapping[m] for m in labels.to_pylist()])
    label_name = arrow.strings([names[m] for m in labels.to_pylist()])
    label_class_name = arrow.strings(
        [names[mapping[m] if filters.relabel else m] for m in labels.to_pylist()])
    indexed = getattr(source, "indexed", False)
    if not indexed:  # one lookup: each one may scan a whole CSV
        info, keys = _unique_info(source.images(pc.unique(boxes["ImageID"])).select(IMAGE_INFO))
    for start in range(0, boxes.num_rows, rows):
        part = boxes.slice(start, rows)
        box_id = box_id_text(arrow.numpy(part[BOX_KEY]))
        part = part.drop_columns([BOX_KEY])
        # One hash lookup per box for the three label columns, then takes from small arrays.
        at = pc.index_in(part["LabelName"], value_set=labels)
        class_mid = pc.take(label_class, at) if filters.relabel else part["LabelName"]
        part = (part.append_column("ClassMID", class_mid)
                .append_column("Class", pc.take(label_class_name, at))
                .append_column("LabelDisplayName", pc.take(label_name, at)))
        if indexed:
            found = source.image_rows(image[start:start + rows])
            for name in IMAGE_INFO[1:]:
                part = part.append_column(name, found[name])
        else:
            part = _join_info(part, image[start:start + rows], info, keys)
        # A table, not record batches: its columns come in chunks that need not line up.
        yield part.append_column("BoxID", box_id)


def select_table(source: Source, ontology: Ontology, classes: list[str],
                 filters: Filters) -> pa.Table:
    """The whole selection as one table (see select_batches)."""
    return pa.concat_tables(select_batches(source, ontology, classes, filters))


def select_boxes(source: Source, ontology: Ontology, classes: list[str],
                 filters: Filters) -> pd.DataFrame:
    """The whole selection as a pandas DataFrame (see select_batches)."""
    return select_table(source, ontology, classes, filters).to_pandas()


# Columns of few distinct values are dictionary-encoded (ImageID's dictionary outgrows its
# page and falls back to plain values: the attempt was a tenth of the write);
# the rest skip the attempt; statistics are left out: no reader of a selection uses them,
# and both cost a fifth of the write of a big class.
DICTIONARY = ["Subset", "Source", "LabelName", "ClassMID", "Class", "LabelDisplayName",
              "License"]


def write_selection(batches: Iterable[pa.Table | pa.RecordBatch], dest: Path) -> int:
    """Write a selection's batches to a Parquet file atomically, one at a time; return rows."""
    rows, writer = 0, None
    with atomic_path(dest) as tmp:
        try:
            for batch in batches:
                writer = writer or pq.ParquetWriter(
                    tmp, batch.schema, use_dictionary=DICTIONARY, write_statistics=False)
                writer.write(batch, row_group_size=max(batch.num_rows, 1))
                rows += batch.num_rows
        finally:
            if writer is not None:
                writer.close()
    return rows


def box_ids(boxes: pa.Table | pd.DataFrame) -> pa.Array:
    """A stable id per box: the same box gets the same id in every selection."""
    if not isinstance(boxes, pa.Table):
        boxes = pa.Table.from_pandas(boxes, preserve_index=False)
    return box_id_text(box_numbers(boxes))


def summary(boxes: pd.DataFrame) -> pd.DataFrame:
    """Boxes and images per class."""
    return boxes.groupby(["Class", "ClassMID"]).agg(
        boxes=("BoxID", "size"), images=("ImageID", "nunique")).reset_index()


def images_of(boxes: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct image of a selection: each image is downloaded once."""
    cols = ["ImageID", "Subset", "OriginalURL", "Thumbnail300KURL", "OriginalSize",
            "OriginalMD5", "Rotation"]
    return boxes[cols].drop_duplicates("ImageID").reset_index(drop=True)
