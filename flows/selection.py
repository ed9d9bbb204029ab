"""The selection stage without pandas: what `python -m flows select` runs, so that a warm
selection costs its work plus pyarrow, not the import of every stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.openimages.csvread import image_keys
from flows.openimages.metadata import Metadata
from flows.openimages.ontology import Ontology
from flows.openimages.releases import KINDS
from flows.openimages.select import Filters, select_batches, write_selection
from flows.progress import stepper
from flows.settings import Settings


def metadata(settings: Settings, kinds: tuple[str, ...] = KINDS) -> Metadata:
    """The release's metadata on disk: fetched if missing or changed upstream, then cached."""
    store = Metadata(settings.metadata_url, settings.metadata_dir, settings.openimages_version,
                     tuple(settings.splits), settings.check_upstream, settings.metadata_cache,
                     progress=stepper("metadata"))
    return store.refresh(kinds)


def filters(settings: Settings) -> Filters:
    """The selection filters of the settings."""
    return Filters(
        include_subclasses=settings.include_subclasses, relabel=settings.relabel_subclasses,
        exclude_classes=tuple(settings.exclude_classes), depiction=settings.depiction,
        group_of=settings.group_of, occluded=settings.occluded, truncated=settings.truncated,
        inside=settings.inside, source=settings.box_source,
        min_box_fraction=settings.min_box_fraction,
        max_images_per_class=settings.max_images_per_class, balance=settings.balance_classes,
        seed=settings.selection_seed,
    )


def ontology(settings: Settings) -> Ontology:
    """The class names and hierarchy (fetches only those two small files)."""
    return metadata(settings, kinds=("classes", "hierarchy")).ontology()


def validate_classes(settings: Settings) -> list[str]:
    """Resolve requested and excluded class names to MIDs, failing fast with suggestions."""
    onto = ontology(settings)
    for name in settings.exclude_classes:
        onto.resolve(name)
    return [onto.resolve(name) for name in settings.classes]


def select_to_file(settings: Settings) -> Path:
    """Select the boxes of the requested classes into <workspace>/selection.parquet, a batch
    at a time; class names are resolved first, from the two small class files, so a misspelt
    name fails before the box and image files (gigabytes upstream) are fetched."""
    validate_classes(settings)
    store = metadata(settings)
    dest = settings.workspace / "selection.parquet"
    write_selection(select_batches(store, store.ontology(), settings.classes,
                                   filters(settings)), dest)
    return dest


def counts(selection: Path) -> pa.Table:
    """Boxes and images per class of a selection file (Class, ClassMID, boxes, images)."""
    # numpy rather than Table.group_by: that goes through Acero, which loads pandas, and the
    # two cost more than the counting of a class of a million boxes.
    table = pq.ParquetFile(selection).read(columns=["Class", "ClassMID", "ImageID"])
    classes = pc.dictionary_encode(table["Class"].combine_chunks())
    code = classes.indices.to_numpy().astype(np.int64)
    n = len(classes.dictionary)
    first = np.unique(code, return_index=True)[1]
    pairs = np.sort(_image_rank(table) * n + code)  # nearly sorted already: a quick sort
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
    result = pa.table({
        "Class": classes.dictionary, "ClassMID": table["ClassMID"].take(pa.array(first)),
        "boxes": np.bincount(code, minlength=n), "images": np.bincount(pairs % n, minlength=n)})
    return result.sort_by("Class")


def _image_rank(table: pa.Table) -> np.ndarray:
    """Each row's image as a small number (the rank of its key among the file's images)."""
    keys = image_keys(table["ImageID"])
    if not (keys[1:] >= keys[:-1]).all():  # selections are written sorted by ImageID
        return np.unique(keys, return_inverse=True)[1].astype(np.int64)
    return np.concatenate([[0], np.cumsum(keys[1:] != keys[:-1])]).astype(np.int64)


def distinct_images(selection: Path) -> int:
    """The images of a selection file, each counted once however many classes it shows."""
    rank = _image_rank(pq.ParquetFile(selection).read(columns=["ImageID"]))
    return int(rank.max()) + 1 if len(rank) else 0
