"""The served model's prediction log and the feedback on it, as written by the service.

Layout under the log folder (OPENIMAGER_PREDICTION_LOG_DIR): `log/part-*.parquet` (one row per
classified image), `feedback/part-*.parquet` (corrections sent to /feedback), `images/` (the
uploads kept for labelling) and SHADOW_FILE (the shadow replay's disagreements). Parts appear
whole (written under a temporary name, then renamed).
The folder may be an S3 prefix (`s3://bucket/prefix`), where replicas of the service in
separate containers write their parts side by side; the readers read every replica's.
"""

from __future__ import annotations

import io
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
# The last shadow replay of a candidate against the promoted model on the kept uploads
# (written by the gate before a promotion and by `python -m flows shadow`, read by the review
# queue), a JSON object: {"candidate": tag, "incumbent": tag, "at": ISO time, "since": ISO
# time or null (the promotion the uploads were kept since), "report": {...} (its figures),
# "disagreements": [{"sha256", "name" (the file under images/), "incumbent_label",
# "incumbent_probability", "candidate_label", "candidate_probability"}, ...]}: one entry per
# upload the two answer differently.
SHADOW_FILE = "shadow/latest.json"
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp",
              "GIF": "gif"}


def part_files(folder: Path) -> list[Path]:
    """The complete part files in a folder, oldest name first."""
    return sorted(folder.glob(PART_GLOB)) if folder.is_dir() else []


def s3_part_files(url: str) -> list[Any]:
    """The complete parts under an s3://bucket/prefix folder, oldest name first, each as the
    bytes pyarrow reads (boto3 reads the standard AWS configuration, AWS_ENDPOINT_URL too)."""
    import boto3

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/") + "/"
    client = boto3.client("s3")
    keys = [item["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix)
            for item in page.get("Contents", [])
            if "/" not in item["Key"][len(prefix):]
            and fnmatch(item["Key"][len(prefix):], PART_GLOB)]
    found = []
    for key in sorted(keys):
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:  # evicted by the service since the listing
            continue
        found.append(io.BytesIO(body))
    return found


def read_parts(folder: str | Path, schema: pa.Schema,
               columns: list[str] | None = None) -> pa.Table:
    """Every part of a folder (or s3:// prefix) as one table in the given schema (empty when
    there is none)."""
    parts = s3_part_files(folder) if is_s3(folder) else part_files(Path(folder))
    tables = [read_part(part, schema=schema, columns=columns) for part in parts]
    if not tables:
        empty = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        return empty.empty_table()
    return pa.concat_tables(tables)


def read_part(source: Any, **options: Any) -> pa.Table:
    """One part (a path, or its bytes in a file object) as pq.read_table reads it with the
    options, on one thread: reader threads left running over a part in memory abort the
    interpreter at exit (exit 134), and parts are small enough that one thread is as fast."""
    import pyarrow.parquet as pq

    return pq.read_table(source, use_threads=False, **options)


def is_s3(directory: str | Path) -> bool:
    return isinstance(directory, str) and directory.startswith("s3://")


def subfolder(directory: str | Path, name: str) -> str | Path:
    """A folder under a log folder or s3:// prefix."""
    return f"{directory.rstrip('/')}/{name}" if is_s3(directory) else Path(directory) / name


def read_log(directory: str | Path) -> pandas.DataFrame:
    """Every logged prediction under a log folder or s3:// prefix (the parts of every worker
    and replica), one row per image, oldest part first."""
    return read_parts(subfolder(directory, "log"), LOG_SCHEMA).to_pandas()


def read_feedback(directory: str | Path) -> pandas.DataFrame:
    """Every correction sent to /feedback under a log folder or s3:// prefix."""
    return read_parts(subfolder(directory, "feedback"), FEEDBACK_SCHEMA).to_pandas()


def fetch_images(url: str, names: list[str], dest: Path) -> Path:
    """Copy kept uploads (file names under images/ of an s3:// log) down to dest, those not
    there yet; one evicted since it was logged is left out. Returns dest."""
    import boto3

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    prefix = f"{prefix.strip('/')}/images/" if prefix.strip("/") else "images/"
    client = boto3.client("s3")
    dest.mkdir(parents=True, exist_ok=True)
    for name in sorted(set(names)):
        if (dest / name).exists():
            continue
        try:
            body = client.get_object(Bucket=bucket, Key=prefix + name)["Body"].read()
        except client.exceptions.NoSuchKey:
            continue
        temp = dest / f".{name}.tmp"
        temp.write_bytes(body)
        temp.replace(dest / name)
    return dest


def image_name(sha256: str, image_format: str) -> str:
    """The file name of a kept upload: its hash and the format's usual extension."""
    return f"{sha256}.{EXTENSIONS.get(image_format.upper(), image_format.lower())}"
