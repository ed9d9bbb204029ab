"""The served model's prediction log and the feedback on it, as written by the service.

Layout under the log folder (OPENIMAGER_PREDICTION_LOG_DIR): `log/part-*.parquet` (one row per
classified image), `feedback/part-*.parquet` (corrections sent to /feedback) and `images/` (the
uploads kept for labelling). Parts appear whole (written under a temporary name, then renamed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    import pandas

TIME = pa.timestamp("us", tz="UTC")
LOG_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("time", TIME), ("endpoint", pa.string()),
    ("sha256", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("format", pa.string()), ("model", pa.string()), ("classes", pa.list_(pa.string())),
    ("probabilities", pa.list_(pa.float32())), ("top_label", pa.string()),
    ("top_probability", pa.float32()), ("latency_ms", pa.float32()), ("kept", pa.bool_()),
    ("top_hash", pa.string()),  # the revision of the answering model (null: unpublished)
])
FEEDBACK_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("label", pa.string()), ("time", TIME), ("model", pa.string()),
])
PART_GLOB = "part-*.parquet"  # temporary names start with a dot and never match
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp",
              "GIF": "gif"}


def part_files(folder: Path) -> list[Path]:
    """The complete part files in a folder, oldest name first."""
    return sorted(folder.glob(PART_GLOB)) if folder.is_dir() else []


def read_parts(folder: Path, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Every part of a folder as one table in the given schema (empty when there is none)."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(path, schema=schema, columns=columns) for path in part_files(folder)]
    if not tables:
        empty = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        return empty.empty_table()
    return pa.concat_tables(tables)


def read_log(directory: str | Path) -> pandas.DataFrame:
    """Every logged prediction under a log folder, one row per image, oldest part first."""
    return read_parts(Path(directory) / "log", LOG_SCHEMA).to_pandas()


def read_feedback(directory: str | Path) -> pandas.DataFrame:
    """Every correction sent to /feedback under a log folder."""
    return read_parts(Path(directory) / "feedback", FEEDBACK_SCHEMA).to_pandas()


def image_name(sha256: str, image_format: str) -> str:
    """The file name of a kept upload: its hash and the format's usual extension."""
    return f"{sha256}.{EXTENSIONS.get(image_format.upper(), image_format.lower())}"
