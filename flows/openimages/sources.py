"""Where image bytes come from: the CVDF bucket over S3 (boto3, unsigned) or a URL over HTTP.

Each fetch streams one response into a file and raises one of three outcomes on failure:
`Gone` (the image no longer exists there), `Transient` (worth retrying: timeouts, resets,
short bodies, 5xx, 429) or `Refused` (permanent for this run: 403 and other 4xx).
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import urllib3

USER_AGENT = "openimager (Open Images downloader)"
REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 5
PLACEHOLDER_URL = re.compile(r"photo_unavailable", re.IGNORECASE)
MD5_ETAG = re.compile(r"[0-9a-f]{32}")
# Network failures worth another try; urllib3 wraps most socket errors in its HTTPError.
NETWORK_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError,
                  TimeoutError)


class Gone(Exception):
    """The image is not there any more (404/410, NoSuchKey, Flickr's "photo unavailable")."""


class Refused(Exception):
    """A permanent failure for this source: not retried in this run."""


class Transient(Exception):
    """A failure worth retrying, after retry_after seconds when the server said so."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


IN_MEMORY = 8 << 20  # bodies up to this size are also kept in memory, for the decode check


@dataclass
class Fetched:
    """A response body written to a file (and kept in memory when small)."""

    size: int
    md5: str  # hex digest of the bytes received
    etag: str = ""
    body: bytes | None = None


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), if any."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_error(status: int, where: str, wait: str | None = None) -> Exception:
    """The outcome an HTTP error status stands for."""
    if status in (404, 410):
        return Gone(f"{where} {status}")
    if status == 429 or status >= 500:
        return Transient(f"{where} {status}", retry_after(wait))
    return Refused(f"{where} {status}")


class HostGate:
    """Caps the requests in flight per host, and holds a host back after it asked to wait."""

    def __init__(self, per_host: int, workers: int) -> None:
        self.per_host = min(per_host, workers)
        # With no more threads than the cap, no semaphore is needed: each costs lock traffic.
        self.limited = per_host < workers
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        """Hold one of the host's slots, once any pause it asked for is over."""
        slots = self._slots.get(host) if self.limited else nullcontext()
        if slots is None:
            with self._lock:
                slots = self._slots.setdefault(host, threading.BoundedSemaphore(self.per_host))
        with slots:  # the pause is checked after the wait for a slot, which may be long
            while (wait := self._until.get(host, 0.0) - time.monotonic()) > 0:
                time.sleep(wait)
            yield

    def pause(self, host: str, seconds: float) -> None:
        """Send no new request to host for the next `seconds` (a 429 or 503 Retry-After)."""
        with self._lock:
            self._until[host] = max(self._until.get(host, 0.0), time.monotonic() + seconds)


def copy_body(read1: Callable[[int], bytes], dest: Path, length: int | None, deadline: float,
              block: int) -> Fetched:
    """Receive a body into dest, hashing it; raise Transient if it is short or too slow.

    read1 returns whatever has arrived, so a trickle that never trips the socket timeout
    still meets the deadline. A body of known length up to IN_MEMORY is gathered first, then
    hashed and written in one go (every write and hash update is a round trip of the GIL,
    which dozens of threads contend for); a larger one streams to dest as it arrives.
    """
    digest, size, parts = hashlib.md5(), 0, []
    keep = length is not None and length <= IN_MEMORY
    with dest.open("wb") as out:
        while True:
            if time.monotonic() > deadline:
                raise Transient(f"too slow: {size} bytes before the deadline")
            try:
                data = read1(block)
            except NETWORK_ERRORS as error:
                raise Transient(f"{type(error).__name__} after {size} bytes: {error}") from error
            if not data:
                break
            size += len(data)
            if keep:
                parts.append(data)
            else:
                out.write(data)
                digest.update(data)
        if length is not None and size != length:
            raise Transient(f"short body: {size} of {length} bytes")
        body = b"".join(parts) if keep else None
        if body is not None:
            out.write(body)
            digest.update(body)
    return Fetched(size, digest.hexdigest(), body=body)


class HttpSource:
    """GETs over one urllib3 pool per host (keep-alive), following redirects by hand so that
    Flickr's redirect to its "photo unavailable" image is caught."""

    def __init__(self, gate: HostGate, connect: float, read: float, block: int) -> None:
        self.gate, self.block = gate, block
        self.pool = urllib3.PoolManager(
            num_pools=256, maxsize=gate.per_host, retries=False,
            timeout=urllib3.Timeout(connect=connect, read=read),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})

    def host(self, url: str) -> str:
        return urlsplit(url).netloc

    def fetch(self, url: str, dest: Path, seconds: float) -> Fetched:
        """Download url into dest."""
        with self.gate.slot(self.host(url)):
            deadline = time.monotonic() + seconds
            for _ in range(MAX_REDIRECTS + 1):
                try:
                    response = self.pool.request("GET", url, preload_content=False,
                                                 redirect=False)
                except NETWORK_ERRORS as error:
                    raise Transient(f"{type(error).__name__}: {error}") from error
                try:
                    if response.status in REDIRECTS:
                        location = urljoin(url, response.headers.get("Location", ""))
                        response.drain_conn()
                        if PLACEHOLDER_URL.search(urlsplit(location).path):
                            raise Gone(f"photo unavailable (redirect to {location})")
                        url = location
                        continue
                    if response.status != 200:
                        response.drain_conn()
                        raise status_error(response.status, "http",
                                           response.headers.get("Retry-After"))
                    length = response.headers.get("Content-Length")
                    fetched = copy_body(response.read1, dest, int(length) if length else None,
                                        deadline, self.block)
                    fetched.etag = response.headers.get("ETag", "").strip('"')
                    return fetched
                except Transient:
                    response.close()  # never hand a half-read connection back to the pool
                    raise
                finally:
                    response.release_conn()
            raise Refused(f"more than {MAX_REDIRECTS} redirects")


class S3Source:
    """Unsigned GetObject from a CVDF-layout bucket, streamed, length and ETag checked."""

    def __init__(self, gate: HostGate, bucket: str, endpoint_url: str | None, connect: float,
                 read: float, block: int) -> None:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        self.gate, self.bucket, self.block = gate, bucket, block
        # One attempt per call: the retries, their backoff and Retry-After are ours.
        config = Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1},
                        max_pool_connections=gate.per_host, connect_timeout=connect,
                        read_timeout=read)
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1",
                                   config=config)
        self.host = urlsplit(self.client.meta.endpoint_url).netloc

    def fetch(self, key: str, dest: Path, seconds: float) -> Fetched:
        """Download s3://bucket/key into dest."""
        from botocore.exceptions import BotoCoreError, ClientError

        with self.gate.slot(self.host):
            deadline = time.monotonic() + seconds
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as error:
                meta = error.response.get("ResponseMetadata", {})
                code = error.response.get("Error", {}).get("Code", "")
                where = f"s3 {code}".strip() if not code.isdigit() else "s3"
                raise status_error(int(meta.get("HTTPStatusCode", 0)), where,
                                   meta.get("HTTPHeaders", {}).get("retry-after")) from error
            except (BotoCoreError, *NETWORK_ERRORS) as error:
                raise Transient(f"{type(error).__name__}: {error}") from error
            # The urllib3 response under botocore's StreamingBody: read1 keeps the deadline.
            raw = answer["Body"]._raw_stream
            try:
                fetched = copy_body(raw.read1, dest, answer.get("ContentLength"), deadline,
                                    self.block)
            except Transient:
                raw.close()
                raise
            finally:
                raw.release_conn()
        fetched.etag = answer.get("ETag", "").strip('"')
        # A single-part object's ETag is the MD5 of its bytes: a free end-to-end check.
        if MD5_ETAG.fullmatch(fetched.etag) and fetched.etag != fetched.md5:
            raise Transient(f"bytes differ from the object: md5 {fetched.md5}, "
                            f"ETag {fetched.etag}")
        return fetched
