"""Readers of the service's prediction log and feedback (Parquet part files, see
docs/watching-pipeline.md for the layout): plain pandas frames for the pipeline."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

LOG_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("time", pa.timestamp("us", tz="UTC")),
    ("endpoint", pa.string()), ("sha256", pa.string()), ("width", pa.int32()),
    ("height", pa.int32()), ("format", pa.string()), ("model", pa.string()),
    ("classes", pa.list_(pa.string())), ("probabilities", pa.list_(pa.float32())),
    ("top_label", pa.string()), ("top_probability", pa.float32()),
    ("latency_ms", pa.float32()), ("kept", pa.bool_()),
])
FEEDBACK_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("label", pa.string()),
    ("time", pa.timestamp("us", tz="UTC")), ("model", pa.string()),
])


def _read(folder: Path, schema: pa.Schema) -> pd.DataFrame:
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not parts:
        return schema.empty_table().to_pandas()
    return ds.dataset([str(p) for p in parts], schema=schema, format="parquet").to_table() \
        .to_pandas()


def read_log(directory: str | Path) -> pd.DataFrame:
    """Every prediction row under directory/log, or an empty frame with the log's columns."""
    return _read(Path(directory) / "log", LOG_SCHEMA)


def read_feedback(directory: str | Path) -> pd.DataFrame:
    """Every feedback row under directory/feedback, or an empty frame with its columns."""
    return _read(Path(directory) / "feedback", FEEDBACK_SCHEMA)
