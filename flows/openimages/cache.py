"""The columnar metadata cache: each verified CSV converted once, laid out for fast selection.

Boxes go to Parquet sorted by LabelName in small row groups (int8 flags, float32 coordinates,
dictionary-encoded labels), so selecting a few classes reads only their row groups. Image info
goes to an uncompressed Arrow IPC file sorted by a uint64 key of the ImageID and memory-mapped,
so looking up scattered images touches only their rows instead of decoding whole row groups.
A sidecar records the source's size and MD5; a changed source rebuilds the cache.
"""

from __future__ import annotations

import bisect
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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

FORMAT = 1
ROW_GROUP = 65_536
SORT_CHUNK = 1_048_576


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
           boxes: bool, progress: Progress) -> tuple[int, int]:
    """Stream the CSV into an uncompressed IPC file in file order; return (rows, skipped)."""
    rows = skipped = 0
    spool.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([(c, types[c]) for c in columns])
    name = csv.name.removesuffix(".part")
    with pa.OSFile(str(spool), "wb") as sink, pa.ipc.new_file(sink, schema) as writer, progress(
            f"parsing {name} into the cache", csv.stat().st_size,
            done=f"parsed {name} into the cache") as advance:
        for batch in stream(csv, columns, types, advance):
            if boxes:
                ok = valid_boxes(batch)
                skipped += batch.num_rows - (pc.sum(ok).as_py() or 0)
                batch = batch.filter(ok)
            rows += batch.num_rows
            writer.write_batch(batch)
    return rows, skipped


def _mapped(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def _retire(dest: Path) -> None:
    """Drop the old sidecar before the new cache moves in: a crash in between must leave a
    cache that reads as stale, never new rows under the old source's sidecar."""
    _info_path(dest).unlink(missing_ok=True)


def build_box_cache(csv: Path, source: Stamp, dest: Path, progress: Progress = quiet) -> dict:
    """Convert a box CSV into a Parquet file sorted by LabelName; return its sidecar info.

    Every row is parsed first: a malformed file raises MetadataError and leaves dest as it was.
    """
    spool = dest.with_name(dest.name + ".spool")
    try:
        rows, skipped = _spool(csv, spool, BOX_COLUMNS, BOX_TYPES, True, progress)
        table = _mapped(spool)
        labels = pc.dictionary_encode(table["LabelName"]).combine_chunks()
        # Sort the small dictionary, then the rows by their label's rank: cheap and stable.
        rank = np.argsort(np.argsort(labels.dictionary.to_numpy(zero_copy_only=False)))
        order = np.argsort(rank[labels.indices.to_numpy()], kind="stable")
        counts = dict(zip(*np.unique(labels.indices.to_numpy(), return_counts=True), strict=True))
        label_counts = {labels.dictionary[int(i)].as_py(): int(n) for i, n in counts.items()}
        _retire(dest)
        with atomic_path(dest) as tmp, pq.ParquetWriter(
            tmp, table.schema, compression="zstd", use_dictionary=["ImageID", "Source", "LabelName"]
        ) as writer:
            for start in range(0, rows, SORT_CHUNK):
                chunk = table.take(pa.array(order[start:start + SORT_CHUNK]))
                writer.write_table(chunk, row_group_size=ROW_GROUP)
    finally:
        spool.unlink(missing_ok=True)
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
        rows, _ = _spool(csv, spool, IMAGE_COLUMNS, IMAGE_TYPES, False, progress)
        table = _mapped(spool)
        keys = image_keys(table["ImageID"])
        order = np.argsort(keys, kind="stable")
        schema = pa.schema([("Key", pa.uint64()), *table.schema])
        _retire(dest)
        with atomic_path(dest) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_file(sink, schema) as writer:
            for start in range(0, rows, SORT_CHUNK):
                index = order[start:start + SORT_CHUNK]
                chunk = table.take(pa.array(index))
                writer.write_table(
                    pa.Table.from_arrays([pa.array(keys[index]), *chunk.columns], schema=schema),
                    max_chunksize=ROW_GROUP)
    finally:
        spool.unlink(missing_ok=True)
    info = {"format": FORMAT, "source": {"size": source.size, "md5": source.md5}, "rows": rows}
    write_json(_info_path(dest), info)
    return info


def boxes_from_cache(cache: Path, mids: list[str]) -> pa.Table:
    """The boxes of the given labels, reading only the row groups that hold them."""
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
    table = parquet.read_row_groups(groups)
    table = table.filter(pc.is_in(table["LabelName"], value_set=pa.array(wanted, pa.string())))
    return table.cast(pa.schema([(c, BOX_TYPES[c]) for c in BOX_COLUMNS]))


def images_from_cache(cache: Path, image_ids: pa.Array) -> pa.Table:
    """The image-info rows of the given ImageIDs, read batch by batch from the mapped file.

    Each batch gets its own memory map, closed before the next: the pages a lookup touches
    leave the process when their map closes, so memory stays near one batch whatever the size
    of the file.
    """
    wanted = np.unique(image_keys(image_ids))
    with pa.memory_map(str(cache)) as source:
        reader = pa.ipc.open_file(source)
        count, schema = reader.num_record_batches, reader.schema
    parts = []
    for i in range(count):
        with pa.memory_map(str(cache)) as source:
            batch = pa.ipc.open_file(source).get_batch(i)
            keys = batch["Key"].to_numpy()
            lo, hi = np.searchsorted(wanted, [keys[0], keys[-1]], side="left")[0], np.searchsorted(
                wanted, keys[-1], side="right")
            sub = wanted[lo:hi]
            at = np.searchsorted(keys, sub)
            hits = at[keys[at] == sub]
            if len(hits):
                parts.append(batch.take(pa.array(hits, pa.int64())))
            del batch, keys
    return pa.Table.from_batches(parts, schema=schema).drop_columns(["Key"])
