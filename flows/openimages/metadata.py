"""Open Images metadata files: where they live, fetching them verified, and reading boxes."""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import requests

from flows.atomic import atomic_path

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
BOX_COLUMNS = ["ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax", "IsOccluded",
               "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]
IMAGE_COLUMNS = ["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License",
                 "AuthorProfileURL", "Author", "Title", "OriginalSize", "OriginalMD5",
                 "Thumbnail300KURL", "Rotation"]


@dataclass(frozen=True)
class MetadataFile:
    """One published metadata file, relative to the metadata base URL."""

    kind: str
    split: str
    path: str
    size: int | None = None
    md5: str | None = None


# The v6 file set as listed on the Open Images download page; sizes and MD5s as published.
V6_FILES = (
    MetadataFile("classes", "all", "v5/class-descriptions-boxable.csv", 12011,
                 "9846fd22fd2e68b45e3f3810a4c2a32a"),
    MetadataFile("hierarchy", "all", "2018_04/bbox_labels_600_hierarchy.json"),
    MetadataFile("boxes", "train", "v6/oidv6-train-annotations-bbox.csv", 2258447590,
                 "3c3e70cfaba5757ea5c2604b19cac3b2"),
    MetadataFile("boxes", "validation", "v5/validation-annotations-bbox.csv", 25105048,
                 "c5e8200df129ea6867e913e8b21fcab9"),
    MetadataFile("boxes", "test", "v5/test-annotations-bbox.csv", 77484237,
                 "1cc058a7003b4e73d47642276e9b123b"),
    MetadataFile("images", "train", "2018_04/train/train-images-boxable-with-rotation.csv",
                 638407721, "a4ac0bcedb5c2df4d1b1230dc6b41b8f"),
    MetadataFile("images", "validation",
                 "2018_04/validation/validation-images-with-rotation.csv", 15245485,
                 "643a54e43b0bab8acce8817b4a569780"),
    MetadataFile("images", "test", "2018_04/test/test-images-with-rotation.csv", 45227339,
                 "d832feb775b3cb78077bf8ae350adce5"),
)


class ChecksumError(RuntimeError):
    """A downloaded file does not match its published size or MD5."""


def md5_of(path: Path) -> str:
    """Return the hex MD5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: Path, size: int | None = None, md5: str | None = None) -> Path:
    """Download url (https, http or file) to dest atomically, verifying size and MD5 if known."""
    with atomic_path(dest) as tmp:
        parsed = urlparse(url)
        if parsed.scheme == "file":
            shutil.copyfile(parsed.path, tmp)
        else:
            with requests.get(url, stream=True, timeout=60) as response:
                response.raise_for_status()
                with tmp.open("wb") as out:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        out.write(chunk)
        actual_size = tmp.stat().st_size
        if size is not None and actual_size != size:
            raise ChecksumError(f"{url}: expected {size} bytes, got {actual_size}")
        if md5 is not None and (actual := md5_of(tmp)) != md5:
            raise ChecksumError(f"{url}: expected MD5 {md5}, got {actual}")
    return dest


def fetch_metadata(
    base_url: str, dest_dir: Path, verify: bool, files: tuple[MetadataFile, ...] = V6_FILES
) -> dict[tuple[str, str], Path]:
    """Fetch every metadata file that is not yet on disk; return (kind, split) -> local path.

    Published sizes and MD5s are checked only when verify is true, i.e. against the official
    source; a mirror (such as the bundled sample) carries files of its own.
    """
    paths: dict[tuple[str, str], Path] = {}
    for item in files:
        dest = dest_dir / item.path
        if not dest.exists():
            log.info("fetching %s", item.path)
            fetch(f"{base_url.rstrip('/')}/{item.path}", dest,
                  item.size if verify else None, item.md5 if verify else None)
        paths[(item.kind, item.split)] = dest
    return paths


def read_boxes(path: Path, mids: list[str]) -> pa.Table:
    """Stream a box CSV and keep only rows whose LabelName is in mids (bounded memory)."""
    flag = pa.int8()
    types = {"ImageID": pa.string(), "LabelName": pa.string(), "XMin": pa.float32(),
             "XMax": pa.float32(), "YMin": pa.float32(), "YMax": pa.float32(),
             **{c: flag for c in BOX_COLUMNS if c.startswith("Is")}}
    reader = pv.open_csv(
        path,
        read_options=pv.ReadOptions(block_size=64 << 20),
        convert_options=pv.ConvertOptions(include_columns=BOX_COLUMNS, column_types=types),
    )
    wanted = pa.array(mids, pa.string())
    batches = [batch.filter(pc.is_in(batch["LabelName"], value_set=wanted)) for batch in reader]
    return pa.Table.from_batches(batches, schema=reader.schema)


def read_images(path: Path, image_ids: pa.Array) -> pa.Table:
    """Stream an image-info CSV and keep only the rows of the given ImageIDs."""
    types = {c: pa.string() for c in IMAGE_COLUMNS}
    types.update({"OriginalSize": pa.int64(), "Rotation": pa.float32()})
    reader = pv.open_csv(
        path,
        read_options=pv.ReadOptions(block_size=64 << 20),
        convert_options=pv.ConvertOptions(include_columns=IMAGE_COLUMNS, column_types=types),
    )
    batches = [batch.filter(pc.is_in(batch["ImageID"], value_set=image_ids)) for batch in reader]
    return pa.Table.from_batches(batches, schema=reader.schema)
