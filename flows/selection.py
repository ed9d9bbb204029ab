"""The selection stage without pandas: what `python -m flows select` runs, so that a warm
selection costs its work plus pyarrow, not the import of every stage."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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
    table = pq.read_table(selection, columns=["Class", "ClassMID", "ImageID"])
    grouped = table.group_by(["Class", "ClassMID"]).aggregate(
        [("ImageID", "count"), ("ImageID", "count_distinct")])
    return grouped.rename_columns(["Class", "ClassMID", "boxes", "images"]).sort_by("Class")


def distinct_images(selection: Path) -> int:
    """The images of a selection file, each counted once however many classes it shows."""
    import pyarrow.compute as pc

    return pc.count_distinct(pq.read_table(selection, columns=["ImageID"])["ImageID"]).as_py()
