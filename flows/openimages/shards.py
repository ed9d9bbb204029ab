"""The dataset as Parquet shards: immutable files of crops, their bytes beside their rows.

A shard holds a few hundred to a few thousand crops: an `image` column in the Hugging Face
convention (a struct of `bytes` and `path`) and the crop's label, split, box, source photo,
author and licence. Its name is a hash of its content, so a shard is never changed in place:
new crops go into new shards, and the live table (`crops.parquet`, columns `Shard` and `Row`)
says which rows of which shards are the dataset. pandas, pyarrow, DuckDB and Hugging Face
`datasets` read the shards as they are.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SHARDS_DIR = "shards"
IMAGE = "image"
# The crop's row in a shard, as the crops table names its columns.
SHARD_COLUMNS = ["CropPath", "Class", "Split", "ImageID", "BoxID", "XMin", "XMax", "YMin",
                 "YMax", "Width", "Height", "Author", "License", "OriginalLandingURL"]
_FLOATS = {"XMin", "XMax", "YMin", "YMax"}
_INTS = {"Width", "Height"}
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
# What `datasets` reads from the schema: `image` is an Image feature, the rest plain values.
HF_FEATURES = {IMAGE: {"_type": "Image"}, **{
    c: {"dtype": "float64" if c in _FLOATS else "int64" if c in _INTS else "string",
        "_type": "Value"} for c in SHARD_COLUMNS}}


def schema() -> pa.Schema:
    """The schema every shard has, with the Hugging Face feature metadata."""
    fields = [pa.field(IMAGE, IMAGE_TYPE)] + [
        pa.field(c, pa.float64() if c in _FLOATS else pa.int64() if c in _INTS else pa.string())
        for c in SHARD_COLUMNS]
    info = {"info": {"features": HF_FEATURES}}
    return pa.schema(fields, metadata={"huggingface": json.dumps(info)})


def shard_bytes(rows: Sequence[dict], images: Sequence[bytes]) -> bytes:
    """One shard's Parquet file: a row per crop (SHARD_COLUMNS) with its JPEG bytes."""
    columns = {IMAGE: pa.StructArray.from_arrays(
        [pa.array(images, pa.binary()), pa.array([r["CropPath"] for r in rows], pa.string())],
        fields=list(IMAGE_TYPE))}
    for column in SHARD_COLUMNS:
        columns[column] = [_value(r.get(column), column) for r in rows]
    return encode(pa.Table.from_pydict(columns, schema=schema()))


def encode(table: pa.Table) -> bytes:
    """A table of the shard schema as Parquet bytes."""
    buffer = io.BytesIO()
    # JPEG bytes do not compress; the rows are small. One row group per 1,024 crops.
    pq.write_table(table, buffer, compression="zstd", row_group_size=1024,
                   use_dictionary=[c for c in SHARD_COLUMNS if c not in _FLOATS])
    return buffer.getvalue()


def _value(value: object, column: str) -> object:
    """A value as the schema's column type takes it (NaN and missing become null)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if column in _FLOATS:
        return float(value)  # type: ignore[arg-type]
    return int(value) if column in _INTS else str(value)  # type: ignore[call-overload]


def shard_name(data: bytes, prefix: str = "crops") -> str:
    """The content-addressed file name of a shard."""
    return f"{prefix}-{hashlib.sha256(data).hexdigest()[:20]}.parquet"


def write_shard(folder: Path, data: bytes, prefix: str = "crops") -> str:
    """Write a shard's bytes under its content name (atomically; a copy there is kept)."""
    name = shard_name(data, prefix)
    dest = folder / name
    if not dest.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{os.getpid()}.part"
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    return name


def shard_rows(path: Path) -> int:
    """How many rows a shard holds (from its footer)."""
    return pq.read_metadata(path).num_rows


def runs(shards: Sequence[str], rows: Sequence[int]) -> Iterator[tuple[str, list[int], int]]:
    """Consecutive runs of the same shard: (shard, its rows, position of the run's first)."""
    start = 0
    for i in range(1, len(shards) + 1):
        if i == len(shards) or shards[i] != shards[start]:
            yield shards[start], [int(r) for r in rows[start:i]], start
            start = i


def image_bytes(folder: Path, shard: str, rows: Sequence[int]) -> pa.Array:
    """The JPEG bytes of some rows of a shard, in the order asked."""
    column = pq.read_table(folder / shard, columns=[IMAGE]).column(IMAGE).combine_chunks()
    return column.field("bytes").take(pa.array(rows, pa.int64()))


def read_images(folder: Path, shards: Sequence[str], rows: Sequence[int]) -> list[bytes]:
    """The JPEG bytes of crops given by (shard, row), in that order."""
    out: list[bytes] = []
    for shard, numbers, _ in runs(shards, rows):
        out.extend(image_bytes(folder, shard, numbers).to_pylist())
    return out


def prune_shards(folder: Path, live: set[str]) -> int:
    """Delete shards no live row refers to, and partial writes; return how many."""
    removed = 0
    for path in folder.iterdir() if folder.exists() else []:
        stale = path.suffix == ".parquet" and path.name not in live
        if (stale or path.name.endswith(".part")) and path.is_file():
            path.unlink()
            removed += 1
    return removed
