"""The columnar metadata cache: each verified CSV converted once, laid out for fast selection.

Boxes go to Parquet sorted by LabelName, then ImageID and box id, in small row groups (int8
flags, float32 coordinates, dictionary-encoded labels), so selecting a few classes reads only
their row groups; each box's id is computed once here and stored as its number (BoxKey), as a
SHA-1 per box is most of what a selection of a big class would cost. Image info
goes to an uncompressed Arrow IPC file sorted by a uint64 key of the ImageID and memory-mapped,
so looking up scattered images touches only their rows instead of decoding whole row groups.
A sidecar records the source's size and MD5; a changed source rebuilds the cache.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.openimages import arrow
from flows.openimages.boxid import box_numbers
from flows.openimages.csvread import (
    BOX_COLUMNS,
    BOX_TYPES,
    IMAGE_COLUMNS,
    IMAGE_TYPES,
    image_keys,
    stream,
    valid_boxes,
)
from flows.openimages.fetch import Progress, Stamp, quiet
from model.atomic import atomic_path, write_json

log = logging.getLogger(__name__)

FORMAT = 2  # 2: BoxKey stored, rows sorted by image and box within a label
BOX_KEY = "BoxKey"
ROW_GROUP = 65_536
SORT_CHUNK = 262_144  # rows taken in sorted order at a time: a few row groups
PASS_BYTES = 256 << 20  # of spooled rows sorted at a time: the build's memory is about 2x this


def _info_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".json")


def cache_info(cache: Path) -> dict | None:
    """The sidecar of a cache file (source, rows, skips, label counts), or None."""
    path = _info_path(cache)
    return json.loads(path.read_text()) if cache.exists() and path.exists() else None


def is_fresh(cache: Path, source: Stamp) -> bool:
    """Whether cache was built, in the current format, from exactly this source file."""
    info = cache_info(cache)
    return bool(info and info["format"] == FORMAT
                and info["source"] == {"size": source.size, "md5": source.md5})


def _spool(csv: Path, spool: Path, columns: list[str], types: dict[str, pa.DataType],
           boxes: bool, progress: Progress) -> tuple[int, int, Counter[str]]:
    """Stream the CSV into an uncompressed IPC file in file order; return (rows, skipped,
    rows per label)."""
    rows = skipped = 0
    labels: Counter[str] = Counter()
    spool.parent.mkdir(parents=True, exist_ok=True)
    schema = _schema(columns, types)
    if boxes:
        schema = schema.append(pa.field(BOX_KEY, pa.uint64()))
    name = csv.name.removesuffix(".part")
    with pa.OSFile(str(spool), "wb") as sink, pa.ipc.new_file(sink, schema) as writer, progress(
            f"parsing {name} into the cache", csv.stat().st_size,
            done=f"parsed {name} into the cache") as advance:
        for batch in stream(csv, columns, types, advance):
            if boxes:
                ok = valid_boxes(batch)
                skipped += batch.num_rows - (pc.sum(ok).as_py() or 0)
                batch = batch.filter(ok)
                batch = batch.append_column(BOX_KEY, pa.array(box_numbers(batch)))
                for count in pc.value_counts(batch["LabelName"]).to_pylist():
                    labels[count["values"]] += count["counts"]
            rows += batch.num_rows
            writer.write_batch(batch)
    return rows, skipped, labels


def _passes(spool: Path, masks: list[Callable[[pa.RecordBatch], pa.Array]]) -> Iterator[pa.Table]:
    """For each mask, the spool's rows it selects, in file order.

    The spool is read batch by batch, once per mask, rather than memory-mapped and sorted in
    one go: mapped pages count as resident once touched, and a sort touches them all, so the
    whole spool (1 GB for the v6 train boxes) plus the sort used to be the build's peak. A
    pass holds about PASS_BYTES of rows instead.
    """
    with pa.OSFile(str(spool)) as source:
        reader = pa.ipc.open_file(source)
        for mask in masks:
            parts = []
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                parts.append(batch.filter(mask(batch)))
            yield pa.Table.from_batches(parts, reader.schema)


def _label_runs(counts: Counter[str], per_pass: int) -> list[list[str]]:
    """The labels in sorted order, cut into runs of about per_pass rows (one pass each)."""
    runs: list[list[str]] = []
    size = 0
    for label in sorted(counts):
        if not runs or (runs[-1] and size + counts[label] > per_pass):
            runs.append([])
            size = 0
        runs[-1].append(label)
        size += counts[label]
    return runs


def _rows_per_pass(spool: Path, rows: int) -> int:
    return max(1, int(rows * PASS_BYTES / max(1, spool.stat().st_size)))


def _retire(dest: Path) -> None:
    """Drop the old sidecar before the new cache moves in: a crash in between must leave a
    cache that reads as stale, never new rows under the old source's sidecar."""
    _info_path(dest).unlink(missing_ok=True)


def _has_label(labels: pa.Array, batch: pa.RecordBatch) -> pa.Array:
    return pc.is_in(batch["LabelName"], value_set=labels)


def _key_between(low: int, high: int, batch: pa.RecordBatch) -> pa.Array:
    keys = image_keys(batch["ImageID"])
    inside = keys >= np.uint64(low)
    if high < 2**64:
        inside &= keys < np.uint64(high)
    return pa.array(inside)


def _schema(columns: list[str], types: dict[str, pa.DataType]) -> pa.Schema:
    return pa.schema([(c, types[c]) for c in columns])


def _box_schema() -> pa.Schema:
    return _schema(BOX_COLUMNS, BOX_TYPES).append(pa.field(BOX_KEY, pa.uint64()))


def build_box_cache(csv: Path, source: Stamp, dest: Path, progress: Progress = quiet) -> dict:
    """Convert a box CSV into a Parquet file sorted by LabelName; return its sidecar info.

    Every row is parsed first: a malformed file raises MetadataError and leaves dest as it was.
    """
    spool = dest.with_name(dest.name + ".spool")
    try:
        rows, skipped, counts = _spool(csv, spool, BOX_COLUMNS, BOX_TYPES, True, progress)
        runs = _label_runs(counts, _rows_per_pass(spool, rows))
        masks = [partial(_has_label, pa.array(run, pa.string())) for run in runs]
        _retire(dest)
        with atomic_path(dest) as tmp, pq.ParquetWriter(
            tmp, _box_schema(), compression="zstd",
            use_dictionary=["ImageID", "Source", "LabelName"]
        ) as writer:
            for table in _passes(spool, masks):
                labels = pc.dictionary_encode(table["LabelName"].combine_chunks())
                # Rank the small dictionary rather than sort the rows' strings.
                rank = np.argsort(np.argsort(labels.dictionary.to_numpy(zero_copy_only=False)))
                # The order a selection writes: a one-class selection needs no sort.
                order = np.lexsort((table[BOX_KEY].to_numpy(), image_keys(table["ImageID"]),
                                    rank[labels.indices.to_numpy()]))
                for start in range(0, len(order), SORT_CHUNK):
                    chunk = table.take(pa.array(order[start:start + SORT_CHUNK]))
                    writer.write_table(chunk, row_group_size=ROW_GROUP)
    finally:
        spool.unlink(missing_ok=True)
    label_counts = {label: counts[label] for label in sorted(counts)}
    info = {"format": FORMAT, "source": {"size": source.size, "md5": source.md5},
            "rows": rows, "skipped_invalid_boxes": skipped, "label_counts": label_counts}
    if skipped:
        log.warning("%s: skipped %d boxes with coordinates outside 0..1 or min >= max",
                    csv.name.removesuffix(".part"), skipped)
    write_json(_info_path(dest), info)
    return info


def build_image_cache(csv: Path, source: Stamp, dest: Path, progress: Progress = quiet) -> dict:
    """Convert an image-info CSV into an IPC file sorted by ImageID key; return its info.

    Every row is parsed first: a malformed file raises MetadataError and leaves dest as it was.
    """
    spool = dest.with_name(dest.name + ".spool")
    try:
        rows, _, _ = _spool(csv, spool, IMAGE_COLUMNS, IMAGE_TYPES, False, progress)
        # ImageIDs are uniform hex: equal ranges of the key space make passes of equal size.
        passes = -(-rows // _rows_per_pass(spool, rows))
        bounds = [round(i * 2**64 / passes) for i in range(passes + 1)]
        masks = [partial(_key_between, low, high) for low, high in itertools.pairwise(bounds)]
        schema = pa.schema([("Key", pa.uint64()), *_schema(IMAGE_COLUMNS, IMAGE_TYPES)])
        _retire(dest)
        with atomic_path(dest) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_file(sink, schema) as writer:
            for table in _passes(spool, masks):
                keys = image_keys(table["ImageID"])
                order = np.argsort(keys, kind="stable")
                for start in range(0, len(order), SORT_CHUNK):
                    index = order[start:start + SORT_CHUNK]
                    chunk = table.take(pa.array(index))
                    writer.write_table(
                        pa.Table.from_arrays([pa.array(keys[index]), *chunk.columns],
                                             schema=schema),
                        max_chunksize=ROW_GROUP)
    finally:
        spool.unlink(missing_ok=True)
    info = {"format": FORMAT, "source": {"size": source.size, "md5": source.md5}, "rows": rows}
    write_json(_info_path(dest), info)
    return info


def boxes_from_cache(cache: Path, mids: list[str]) -> pa.Table:
    """The boxes of the given labels with their BoxKey, reading only the row groups that hold
    them, sorted by label, ImageID and BoxKey."""
    # The row groups are picked from their statistics by hand: pq.read_table(filters=...)
    # goes through pyarrow.dataset, which imports pandas, a second of a warm selection.
    wanted = sorted(mids)
    parquet = pq.ParquetFile(cache)
    meta = parquet.metadata
    column = meta.schema.names.index("LabelName")
    groups = []
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max or (
                bisect.bisect_right(wanted, stats.max) > bisect.bisect_left(wanted, stats.min)):
            groups.append(group)
    # One thread: the column decoders' threads cost more CPU than they save time.
    table = parquet.read_row_groups(groups, use_threads=False)
    table = table.filter(pc.is_in(table["LabelName"], value_set=arrow.strings(wanted)))
    if BOX_KEY not in table.column_names:  # a cache of format 1, read directly
        table = table.append_column(BOX_KEY, arrow.array(box_numbers(table)))
    return table.cast(_box_schema())


def images_from_cache(cache: Path, image_ids: pa.Array) -> pa.Table:
    """The image-info rows of the given ImageIDs, read batch by batch from the mapped file.

    Each batch gets its own memory map, closed before the next: the pages a lookup touches
    leave the process when their map closes, so memory stays near one batch whatever the size
    of the file.
    """
    wanted = np.sort(image_keys(image_ids))  # a sort, then drop repeats: cheaper than
    wanted = wanted[np.r_[True, wanted[1:] != wanted[:-1]]]  # np.unique's hash table
    with pa.memory_map(str(cache)) as source:
        reader = pa.ipc.open_file(source)
        count, schema = reader.num_record_batches, reader.schema
    parts = []
    for i in range(count):
        with pa.memory_map(str(cache)) as source:
            batch = pa.ipc.open_file(source).get_batch(i)
            keys = arrow.numpy(batch["Key"])
            lo, hi = np.searchsorted(wanted, [keys[0], keys[-1]], side="left")[0], np.searchsorted(
                wanted, keys[-1], side="right")
            sub = wanted[lo:hi]
            at = np.searchsorted(keys, sub)
            hits = at[keys[at] == sub]
            if len(hits):
                parts.append(batch.take(arrow.array(hits.astype(np.int64))))
            del batch, keys
    return pa.Table.from_batches(parts, schema=schema).drop_columns(["Key"])


def image_rows_from_cache(cache: Path, keys: np.ndarray) -> pa.Table:
    """The image-info row of each of the given image keys (sorted, repeats allowed: one per
    box), in their order; a null row where the cache has no such image.

    Rows are taken once, straight from each mapped batch into the result, rather than
    looked up per image and then repeated per box: a selection's image info is most of its
    bytes. As in images_from_cache, each batch's map is closed before the next.
    """
    with pa.memory_map(str(cache)) as source:
        reader = pa.ipc.open_file(source)
        count, schema = reader.num_record_batches, reader.schema
    schema = schema.remove(schema.get_field_index("Key"))

    def missing(rows: int) -> pa.Table:  # not schema.empty_table(): it loads pandas
        return pa.table([pa.nulls(rows, f.type) for f in schema], schema=schema)

    parts, done = [missing(0)], 0
    for i in range(count):
        if done == len(keys):
            break
        with pa.memory_map(str(cache)) as source:
            batch = pa.ipc.open_file(source).get_batch(i)
            found = arrow.numpy(batch["Key"])
            if not len(found):
                continue
            start = done + int(np.searchsorted(keys[done:], found[0], side="left"))
            stop = done + int(np.searchsorted(keys[done:], found[-1], side="right"))
            if start > done:
                parts.append(missing(start - done))
            if stop > start:
                at = np.minimum(np.searchsorted(found, keys[start:stop]), len(found) - 1)
                hit = found[at] == keys[start:stop]
                taken = batch.drop_columns(["Key"]).take(arrow.array(at, mask=~hit))
                parts.append(pa.Table.from_batches([taken]))
            done = stop
            del batch, found
    if len(keys) > done:
        parts.append(missing(len(keys) - done))
    return pa.concat_tables(parts)
