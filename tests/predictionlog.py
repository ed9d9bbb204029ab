"""Prediction-log and feedback part files written as the service writes them (the shared
layout in docs/watching-pipeline.md), for the pipeline's tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from model.predictions import FEEDBACK_SCHEMA, LOG_SCHEMA

WRITER = uuid.uuid4().hex[:16]  # as a worker of the service names its parts


def _part(folder: Path, rows: list[dict], schema: pa.Schema, seq: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    dest = folder / f"part-{stamp}-{WRITER}-{seq:06d}.parquet"
    tmp = dest.with_name("." + dest.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    tmp.rename(dest)
    return dest


def log_rows(crops: pd.DataFrame, classes: list[str], model: str = "m:1",
             kept: bool = False, time: datetime | None = None) -> list[dict]:
    """One logged request per crop row, predicted as its true class."""
    rows = []
    for row in crops.itertuples():
        probs = [0.9 if c == row.Class else 0.1 / (len(classes) - 1) for c in classes]
        rows.append({"request_id": uuid.uuid4().hex, "time": time or datetime.now(UTC),
                     "endpoint": "classify", "sha256": uuid.uuid4().hex * 2,
                     "width": int(row.Width), "height": int(row.Height), "format": "JPEG",
                     "model": model, "classes": classes, "probabilities": probs,
                     "top_label": row.Class, "top_probability": 0.9, "latency_ms": 5.0,
                     "kept": kept})
    return rows


def write_log(folder: Path, rows: list[dict], seq: int = 0) -> Path:
    return _part(folder / "log", rows, LOG_SCHEMA, seq)


def write_feedback(folder: Path, labels: dict[str, str], model: str = "m:1",
                   seq: int = 0) -> Path:
    rows = [{"request_id": r, "label": label, "time": datetime.now(UTC), "model": model}
            for r, label in labels.items()]
    return _part(folder / "feedback", rows, FEEDBACK_SCHEMA, seq)
