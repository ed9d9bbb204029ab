"""Fetching metadata files: resumable, verified, atomic, re-fetched only when changed upstream."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests
from tqdm import tqdm

from model.atomic import write_json

log = logging.getLogger(__name__)

BLOCK = 1 << 20


class ChecksumError(RuntimeError):
    """A downloaded file does not match its published or announced size or MD5."""


@dataclass(frozen=True)
class Stamp:
    """What is known of a fetched file: where from, its validators and its verified digest."""

    url: str
    size: int
    md5: str
    etag: str | None = None
    last_modified: str | None = None


def stamp_path(dest: Path) -> Path:
    """The sidecar recording a verified file's stamp."""
    return dest.with_name(dest.name + ".stamp.json")


def read_stamp(dest: Path) -> Stamp | None:
    """The stamp of a verified file, or None when the file or its stamp is missing."""
    path = stamp_path(dest)
    if not dest.exists() or not path.exists():
        return None
    return Stamp(**json.loads(path.read_text()))


def md5_of(path: Path) -> str:
    """Hex MD5 of a file, read in blocks."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _head(url: str, session: requests.Session) -> dict[str, str | None]:
    response = session.head(url, timeout=30, allow_redirects=True)
    response.raise_for_status()
    return {"etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
            "size": response.headers.get("Content-Length")}


def changed_upstream(url: str, stamp: Stamp, session: requests.Session) -> bool:
    """Whether upstream's ETag, Last-Modified or Content-Length differ from the stamp."""
    head = _head(url, session)
    if head["etag"] and stamp.etag:
        return head["etag"] != stamp.etag
    if head["size"] is not None and int(head["size"]) != stamp.size:
        return True
    return bool(head["last_modified"] and head["last_modified"] != stamp.last_modified)


def _download(url: str, part: Path, session: requests.Session) -> dict[str, str | None]:
    """Append the rest of url to part (HTTP Range); return the response's validators."""
    have = part.stat().st_size if part.exists() else 0
    etag_file = part.with_name(part.name + ".etag")
    headers = {"Range": f"bytes={have}-"} if have else {}
    if have and etag_file.exists():  # resume only the same version, else start over
        headers["If-Range"] = etag_file.read_text()
    with session.get(url, stream=True, timeout=60, headers=headers) as response:
        if response.status_code == 416:  # the part is already complete
            return {"etag": None, "last_modified": None, "total": str(have)}
        response.raise_for_status()
        resumed = response.status_code == 206
        total = response.headers.get("Content-Range", "").rpartition("/")[2] if resumed else (
            response.headers.get("Content-Length"))
        mode = "ab" if resumed else "wb"
        if response.headers.get("ETag"):
            etag_file.write_text(response.headers["ETag"])
        with part.open(mode) as out, tqdm(
            total=int(total) if total and total != "*" else None, initial=have if resumed else 0,
            unit="B", unit_scale=True, desc=part.name.removesuffix(".part"), leave=False,
        ) as bar:
            # Small chunks: what arrived before a dropped connection is kept for the resume.
            for chunk in response.iter_content(chunk_size=1 << 16):
                out.write(chunk)
                bar.update(len(chunk))
        return {"etag": response.headers.get("ETag"),
                "last_modified": response.headers.get("Last-Modified"), "total": total}


def _discard(part: Path) -> None:
    """Remove a part file and the ETag its resume would be checked against."""
    part.unlink(missing_ok=True)
    part.with_name(part.name + ".etag").unlink(missing_ok=True)


def fetch(url: str, dest: Path, size: int | None = None, md5: str | None = None,
          session: requests.Session | None = None) -> Stamp:
    """Download url to dest via a resumable part file; verify it, then rename it into place.

    A size or MD5 mismatch raises ChecksumError naming the file and both values, and removes
    only the unverified part file: a verified dest from an earlier run is never touched.
    """
    session = session or requests.Session()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    parsed = urlparse(url)
    if parsed.scheme == "file":
        shutil.copyfile(parsed.path, part)
        validators: dict[str, str | None] = {"etag": None, "last_modified": None, "total": None}
    else:
        validators = _download(url, part, session)
    actual_size = part.stat().st_size
    expected = size if size is not None else (
        int(validators["total"]) if validators.get("total") not in (None, "*") else None)
    if expected is not None and actual_size != expected:
        _discard(part)
        raise ChecksumError(f"{dest.name} from {url}: expected {expected} bytes, got {actual_size}")
    actual_md5 = md5_of(part)
    if md5 is not None and actual_md5 != md5:
        _discard(part)
        raise ChecksumError(f"{dest.name} from {url}: expected MD5 {md5}, got {actual_md5}")
    os.replace(part, dest)
    _discard(part)
    stamp = Stamp(url, actual_size, actual_md5, validators["etag"], validators["last_modified"])
    write_json(stamp_path(dest), asdict(stamp))
    return stamp


def ensure(url: str, dest: Path, size: int | None = None, md5: str | None = None,
           check_upstream: bool = True, session: requests.Session | None = None) -> Stamp:
    """Make dest a verified copy of url, downloading only when missing or changed upstream."""
    session = session or requests.Session()
    stamp = read_stamp(dest)
    if stamp is not None and stamp.url == url and (md5 is None or stamp.md5 == md5):
        if not check_upstream or urlparse(url).scheme == "file":
            return stamp
        try:
            if not changed_upstream(url, stamp, session):
                return stamp
        except requests.RequestException as error:
            log.warning("cannot reach %s (%s); using the verified copy from %s", url, error,
                        dest)
            return stamp
        log.info("%s changed upstream; fetching it again", dest.name)
    return fetch(url, dest, size, md5, session)
