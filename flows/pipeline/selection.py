"""The selection stage without pandas: what `python -m flows select` runs, so that a warm
selection costs its work plus pyarrow, not the import of every stage."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.openimages import arrow
from flows.openimages.csvread import image_keys
from flows.openimages.metadata import Metadata
from flows.openimages.ontology import Ontology
from flows.openimages.releases import KINDS
from flows.openimages.select import Filters, select_batches, write_selection
from flows.run.progress import stepper
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


def select_to_file(settings: Settings, tally: Tally | None = None) -> Path:
    """Select the boxes of the requested classes into <workspace>/selection.parquet, a batch
    at a time, counted by tally if given; class names are resolved first, from the two small
    class files, so a misspelt name fails before the box and image files (gigabytes upstream)
    are fetched."""
    validate_classes(settings)
    store = metadata(settings)
    dest = settings.workspace / "selection.parquet"
    tables = select_batches(store, store.ontology(), settings.classes, filters(settings))
    write_selection(tally.count(tables) if tally else tables, dest)
    return dest


class Tally:
    """Boxes and images per class of a selection, counted from its tables as they are
    written (sorted by ImageID, as select_batches yields them) rather than read back."""

    def __init__(self) -> None:
        self.boxes: Counter[str] = Counter()
        self.images: Counter[str] = Counter()
        self.mids: dict[str, str] = {}
        self.distinct_images = 0
        self._last: tuple[int, set[str]] = (-1, set())  # the last image seen, its classes

    def count(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        """Pass tables through, counting each."""
        for table in tables:
            if table.num_rows:
                self._add(table)
            yield table

    def _add(self, table: pa.Table) -> None:
        keys = image_keys(table["ImageID"])
        classes = pc.dictionary_encode(table["Class"].combine_chunks())
        names, code = classes.dictionary.to_pylist(), arrow.numpy(classes.indices).astype(np.int64)
        n = len(names)
        rank = np.cumsum(np.r_[True, keys[1:] != keys[:-1]]) - 1
        pairs = np.sort(rank * n + code)  # one per image and class
        pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
        images = np.bincount(pairs % n, minlength=n)
        first, last = (set(code[keys == keys[i]].tolist()) for i in (0, -1))
        carried = int(keys[0]) == self._last[0]  # an image whose boxes span two tables
        if carried:
            self.distinct_images -= 1
            for c in first:
                images[c] -= names[c] in self._last[1]
        self.distinct_images += int(rank[-1]) + 1
        ends = {names[c] for c in last} | (self._last[1] if carried and rank[-1] == 0 else set())
        self._last = (int(keys[-1]), ends)
        # Each class's first row; not np.unique(return_index=True), which loads numpy.ma.
        order = np.argsort(code, kind="stable")
        firsts = order[np.searchsorted(code[order], np.arange(n))]
        mids = table["ClassMID"].take(arrow.array(firsts)).to_pylist()
        for name, mid, boxes, count in zip(names, mids, np.bincount(code, minlength=n).tolist(),
                                           images.tolist(), strict=True):
            self.mids[name] = mid
            self.boxes[name] += boxes
            self.images[name] += count

    def table(self) -> pa.Table:
        """Class, ClassMID, boxes, images; one row per class, sorted by class."""
        names = sorted(self.boxes)
        return pa.table({"Class": arrow.strings(names),
                         "ClassMID": arrow.strings([self.mids[c] for c in names]),
                         "boxes": arrow.array(np.array([self.boxes[c] for c in names], np.int64)),
                         "images": arrow.array(np.array([self.images[c] for c in names],
                                                        np.int64))})
