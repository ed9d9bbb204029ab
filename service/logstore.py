"""Where the prediction log lives: a local folder or an S3 prefix, with whole-file writes."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Entry:
    """One stored file: its key under the root, size and modification time (epoch seconds)."""

    key: str
    size: int
    mtime: float


class LocalStore:
    """Files under a folder; each write goes to a temporary name first, then is renamed."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def put(self, key: str, data: bytes) -> None:
        """Write a file whole: readers see the old state or the new file, never a part."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        # A leading dot: readers glob part-*.parquet and never see the unfinished file.
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_bytes(data)
        os.replace(temp, path)

    def entries(self, folder: str, after: str = "") -> list[Entry]:
        """The finished files of a folder (temporary ones excluded), only those whose key sorts
        after `after` when given."""
        found = []
        try:
            with os.scandir(self.root / folder) as scan:
                for item in scan:
                    if item.name.startswith(".") or f"{folder}/{item.name}" <= after:
                        continue
                    try:
                        stat = item.stat()
                    except FileNotFoundError:  # another worker evicted it meanwhile
                        continue
                    found.append(Entry(f"{folder}/{item.name}", stat.st_size, stat.st_mtime))
        except FileNotFoundError:
            pass
        return found

    def delete(self, key: str) -> None:
        """Remove a file; one already gone is fine (several workers share the folder)."""
        (self.root / key).unlink(missing_ok=True)

    def source(self, key: str) -> Any:
        """Something pyarrow reads a Parquet file from."""
        return str(self.root / key)

    def read(self, key: str) -> bytes:
        """A file's bytes; FileNotFoundError when it is gone."""
        return (self.root / key).read_bytes()

    def __str__(self) -> str:
        return str(self.root)


class S3Store:
    """Objects under s3://bucket/prefix (a PUT is whole by itself); boto3 reads the usual AWS
    configuration, AWS_ENDPOINT_URL included."""

    def __init__(self, url: str) -> None:
        import boto3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client("s3")
        self.url = url

    def name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.name(key), Body=data)

    def entries(self, folder: str, after: str = "") -> list[Entry]:
        found = []
        start = self.name(folder) + "/"
        # Keys are listed in order: the listing starts after `after` instead of filtering.
        skip = {"StartAfter": self.name(after)} if after else {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start, **skip):
            for item in page.get("Contents", []):
                key = f"{folder}/{item['Key'][len(start):]}"
                found.append(Entry(key, item["Size"], item["LastModified"].timestamp()))
        return found

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.name(key))

    def source(self, key: str) -> Any:
        """The object's bytes, for pyarrow; FileNotFoundError when it is gone."""
        return io.BytesIO(self.read(key))

    def read(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when it is gone (another replica evicted
        it), as for a folder."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.name(key))["Body"]
        except self.client.exceptions.NoSuchKey as gone:
            raise FileNotFoundError(f"{self.url}/{key}") from gone
        return body.read()

    def __str__(self) -> str:
        return self.url


def open_store(location: str) -> LocalStore | S3Store:
    """The store for a folder or an s3:// URL."""
    return S3Store(location) if location.startswith("s3://") else LocalStore(location)
