"""Fetching metadata files: resumable, verified, atomic, re-fetched only when changed upstream.

A new upstream version is downloaded beside the verified copy and replaces it only once it
is verified too; a version that fails keeps the verified copy (and its cache) in use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

from flows.openimages.csvread import MetadataError
from model.atomic import write_json

if TYPE_CHECKING:  # loaded only to reach a server: 0.06 s that a local copy never needs
    import requests

log = logging.getLogger(__name__)

BLOCK = 1 << 20
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class ChecksumError(MetadataError):
    """A complete download does not match its published or announced size or MD5."""


class Progress(Protocol):
    """Reports one long step; flows.run.progress.step is one (data code must not import it)."""

    def __call__(self, what: str, total: int | None = None, *, done: str | None = None,
                 unit: str = "B") -> AbstractContextManager[Callable[[int], None]]: ...


@contextmanager
def quiet(what: str, total: int | None = None, *, done: str | None = None,
          unit: str = "B") -> Iterator[Callable[[int], None]]:
    """A Progress that reports nothing."""
    yield lambda n: None


Check = Callable[[Path, "Stamp"], None]  # raises MetadataError when a candidate file is bad


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


def rejected_path(dest: Path) -> Path:
    """The sidecar recording the upstream version that last failed verification."""
    return dest.with_name(dest.name + ".rejected.json")


def read_stamp(dest: Path) -> Stamp | None:
    """The stamp of a verified file, or None when the file or its stamp is missing."""
    path = stamp_path(dest)
    if not dest.exists() or not path.exists():
        return None
    return Stamp(**json.loads(path.read_text()))


def transient(error: BaseException | None) -> bool:
    """Whether another try may succeed: network failures and 5xx/429, not a bad file or input."""
    import requests

    if isinstance(error, requests.HTTPError):
        status = error.response.status_code if error.response is not None else None
        return status in RETRY_STATUSES
    return isinstance(error, (requests.ConnectionError, requests.Timeout,
                              requests.exceptions.ChunkedEncodingError,
                              requests.exceptions.ContentDecodingError))


def md5_of(path: Path, progress: Progress = quiet, verb: str = "computed") -> str:
    """Hex MD5 of a file, read in blocks; verb says what the digest is for, in the progress."""
    digest = hashlib.md5()
    doing = {"computed": "computing", "verified": "verifying"}.get(verb, verb)
    with path.open("rb") as handle, progress(
            f"{doing} MD5 of {_name(path)}", path.stat().st_size,
            done=f"{verb} MD5 of {_name(path)}") as advance:
        while block := handle.read(BLOCK):
            digest.update(block)
            advance(len(block))
    return digest.hexdigest()


def new_session() -> requests.Session:
    """A requests session, made only when a server is asked."""
    import requests

    return requests.Session()


def _name(path: Path) -> str:
    return path.name.removesuffix(".part")


def _head(url: str, session: requests.Session) -> dict[str, str | None]:
    response = session.head(url, timeout=30, allow_redirects=True)
    response.raise_for_status()
    return {"etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
            "size": response.headers.get("Content-Length")}


def _differs(head: dict[str, str | None], stamp: Stamp) -> bool:
    if head["etag"] and stamp.etag:
        return head["etag"] != stamp.etag
    if head["size"] is not None and int(head["size"]) != stamp.size:
        return True
    return bool(head["last_modified"] and head["last_modified"] != stamp.last_modified)


def changed_upstream(url: str, stamp: Stamp, session: requests.Session) -> bool:
    """Whether upstream's ETag, Last-Modified or Content-Length differ from the stamp."""
    return _differs(_head(url, session), stamp)


def _download(url: str, part: Path, session: requests.Session,
              progress: Progress) -> dict[str, str | None]:
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
        if response.headers.get("ETag"):
            etag_file.write_text(response.headers["ETag"])
        known = int(total) if total and total != "*" else None
        left = known - have if known is not None and resumed else known
        with part.open("ab" if resumed else "wb") as out, progress(
                f"downloading {_name(part)}", left, done=f"downloaded {_name(part)}") as advance:
            # Small chunks: what arrived before a dropped connection is kept for the resume.
            for chunk in response.iter_content(chunk_size=1 << 16):
                out.write(chunk)
                advance(len(chunk))
        return {"etag": response.headers.get("ETag"),
                "last_modified": response.headers.get("Last-Modified"), "total": total}


def _copy(source: Path, part: Path, progress: Progress) -> None:
    with source.open("rb") as src, part.open("wb") as out, progress(
            f"copying {source.name}", source.stat().st_size,
            done=f"copied {source.name}") as advance:
        while block := src.read(BLOCK):
            out.write(block)
            advance(len(block))


def _discard(part: Path) -> None:
    """Remove a part file and the ETag its resume would be checked against."""
    part.unlink(missing_ok=True)
    part.with_name(part.name + ".etag").unlink(missing_ok=True)


def fetch(url: str, dest: Path, size: int | None = None, md5: str | None = None,
          session: requests.Session | None = None, check: Check | None = None,
          progress: Progress = quiet) -> Stamp:
    """Download url beside dest, verify it, then rename it over dest.

    Verified means: the published size and MD5 where given, else the announced length; then
    check(part, stamp) (a full parse). A failure raises ChecksumError or MetadataError naming
    the file and the reason, and removes only the candidate: dest is never touched.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    parsed = urlparse(url)
    if parsed.scheme == "file":
        _copy(Path(parsed.path), part, progress)
        validators: dict[str, str | None] = {"etag": None, "last_modified": None, "total": None}
    else:
        validators = _download(url, part, session or new_session(), progress)
    try:
        actual_size = part.stat().st_size
        expected = size if size is not None else (
            int(validators["total"]) if validators.get("total") not in (None, "*") else None)
        if expected is not None and actual_size != expected:
            raise ChecksumError(f"{dest.name} from {url}: expected {expected} bytes, got "
                                f"{actual_size}")
        actual_md5 = md5_of(part, progress, "verified" if md5 else "computed")
        if md5 is not None and actual_md5 != md5:
            raise ChecksumError(f"{dest.name} from {url}: expected MD5 {md5}, got {actual_md5}")
        stamp = Stamp(url, actual_size, actual_md5, validators["etag"],
                      validators["last_modified"])
        if check is not None:
            try:
                check(part, stamp)
            except MetadataError as error:
                reason = str(error).replace(f"{part}: ", "").replace(str(part), dest.name)
                raise MetadataError(f"{dest.name} from {url}: {reason}") from error
    except MetadataError:
        _discard(part)
        raise
    os.replace(part, dest)
    _discard(part)
    write_json(stamp_path(dest), asdict(stamp))
    rejected_path(dest).unlink(missing_ok=True)
    return stamp


def _rejected_before(dest: Path, head: dict[str, str | None]) -> str | None:
    """Why this same upstream version failed verification before, if it did."""
    path = rejected_path(dest)
    if not path.exists():
        return None
    seen = json.loads(path.read_text())
    return seen["reason"] if seen["head"] == head else None


def ensure(url: str, dest: Path, size: int | None = None, md5: str | None = None,
           check_upstream: bool = True, session: requests.Session | None = None,
           check: Check | None = None, progress: Progress = quiet) -> Stamp:
    """Make dest a verified copy of url, downloading only when missing or changed upstream.

    A changed upstream version that fails verification leaves the verified copy in use (with
    a warning naming the file and the reason) and is not downloaded again until it changes;
    without a verified copy the failure is raised.
    """
    stamp = read_stamp(dest)
    if stamp is None or stamp.url != url or (md5 is not None and stamp.md5 != md5):
        return fetch(url, dest, size, md5, session, check, progress)
    if not check_upstream or urlparse(url).scheme == "file":
        return stamp
    import requests

    session = session or new_session()
    try:
        head = _head(url, session)
    except requests.RequestException as error:
        log.warning("cannot reach %s (%s); using the verified copy from %s", url, error, dest)
        return stamp
    if not _differs(head, stamp):
        return stamp
    reason = _rejected_before(dest, head)
    if reason is None:
        log.info("%s changed upstream; fetching it again", dest.name)
        try:
            return fetch(url, dest, size, md5, session, check, progress)
        except MetadataError as error:
            reason = str(error)
            write_json(rejected_path(dest), {"head": head, "reason": reason})
    log.warning("%s; the new upstream version failed verification, still using the verified "
                "copy in %s", reason, dest.parent)
    return stamp
