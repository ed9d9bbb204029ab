"""Where image bytes come from: the CVDF bucket (unsigned S3 GETs) or a URL, over HTTP.

Both are plain GETs on kept-alive urllib3 connections: the bucket is public, so a request
needs no signature, and boto3's per-request machinery cost 1.4 to 1.8 times the CPU per image
of a plain GET (the boto3 case of benchmarks/download.py). Each fetch receives one response
into a file and raises one of three outcomes on failure:
`Gone` (the image no longer exists there), `Transient` (worth retrying: timeouts, resets,
short bodies, 5xx, 429) or `Refused` (permanent for this run: 403 and other 4xx).
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import os
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import urllib3

USER_AGENT = "openimager (Open Images downloader)"
HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 5
MAX_POOLS = 256  # hosts kept connected at once
PLACEHOLDER_URL = re.compile(r"photo_unavailable", re.IGNORECASE)
MD5_ETAG = re.compile(r"[0-9a-f]{32}")
S3_CODE = re.compile(rb"<Code>([A-Za-z0-9.]{1,64})</Code>")
ERROR_BODY = 1 << 16  # an error answer is read this far for its S3 error code
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
# Files are written with os.open/os.write: a Python file object costs three more syscalls
# (fstat, ioctl, lseek), each a release of the GIL that dozens of threads contend for.
WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


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


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte (os.write may write fewer than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy_body(read1: Callable[[int], bytes], dest: Path, length: int | None, deadline: float,
              block: int) -> Fetched:
    """Receive a body into dest, hashing it; raise Transient if it is short or too slow.

    read1 returns whatever has arrived, so a trickle that never trips the socket timeout
    still meets the deadline. A body of known length up to IN_MEMORY is asked for whole (one
    receive per arrival, not per block), then hashed and written with one call each (every
    call that releases the GIL is a handover among dozens of threads); a larger one streams
    to dest as it arrives.
    """
    digest, size, parts = hashlib.md5(), 0, []
    keep = length is not None and length <= IN_MEMORY
    fd = os.open(dest, WRITE_FLAGS, 0o644)
    try:
        while True:
            if time.monotonic() > deadline:
                raise Transient(f"too slow: {size} bytes before the deadline")
            try:
                data = read1(length - size if keep else block)  # type: ignore[operator]
            except NETWORK_ERRORS as error:
                raise Transient(f"{type(error).__name__} after {size} bytes: {error}") from error
            if not data:
                break
            size += len(data)
            if keep:
                parts.append(data)
                if size >= length:  # type: ignore[operator]
                    break
            else:
                write_all(fd, data)
                digest.update(data)
        if length is not None and size != length:
            raise Transient(f"short body: {size} of {length} bytes")
        body = (parts[0] if len(parts) == 1 else b"".join(parts)) if keep else None
        if body is not None:
            write_all(fd, body)
            digest = hashlib.md5(body)
    finally:
        os.close(fd)
    return Fetched(size, digest.hexdigest(), body=body)


class HttpSource:
    """GETs over one urllib3 pool per host (keep-alive), following redirects by hand so that
    Flickr's redirect to its "photo unavailable" image is caught."""

    where = "http"  # how failures are named in the manifest

    def __init__(self, gate: HostGate, connect: float, read: float, block: int) -> None:
        self.gate, self.block = gate, block
        self.settings = {"maxsize": gate.per_host, "retries": False,
                         "timeout": urllib3.Timeout(connect=connect, read=read)}
        self.pools: dict[tuple[str, str], tuple[urllib3.HTTPConnectionPool, bool, dict]] = {}
        self._lock = threading.Lock()

    def host(self, url: str) -> str:
        return urlsplit(url).netloc

    def connection_pool(self, url: str) -> tuple[urllib3.HTTPConnectionPool, str, dict]:
        """The keep-alive pool of url's host, made on first use, the request target to send
        it and the headers. Asked of a pool directly, a GET skips the PoolManager's URL
        parsing and pool lookup, a fifth of urllib3's CPU per request here. HTTPS_PROXY,
        HTTP_PROXY and NO_PROXY are honoured, as boto3 and requests honour them."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        found = self.pools.get(key)
        if found is None:
            with self._lock:
                if len(self.pools) >= MAX_POOLS:  # a crawl of many hosts: start over
                    for old, _, _ in self.pools.values():
                        old.close()
                    self.pools.clear()
                found = self.pools.setdefault(key, self._new_pool(url, parts.scheme,
                                                                  parts.hostname or ""))
        pool, whole, headers = found
        target = url if whole else urlunsplit(("", "", parts.path or "/", parts.query, ""))
        return pool, target, headers

    def _new_pool(self, url: str, scheme: str, hostname: str) -> tuple:
        tls = {"ca_certs": ca_bundle()} if scheme == "https" else {}
        proxy = urllib.request.getproxies().get(scheme)
        if not proxy or urllib.request.proxy_bypass(hostname):
            return urllib3.connection_from_url(url, **self.settings, **tls), False, HEADERS
        auth = urllib3.util.parse_url(proxy).auth
        extra = urllib3.make_headers(proxy_basic_auth=auth) if auth else {}
        pool = urllib3.ProxyManager(proxy, proxy_headers=extra, **self.settings, **tls) \
            .connection_from_url(url)
        # HTTPS tunnels through the proxy (CONNECT); plain HTTP names the whole URL to it.
        return pool, scheme == "http", {**HEADERS, **extra} if scheme == "http" else HEADERS

    def fetch(self, url: str, dest: Path, seconds: float) -> Fetched:
        """Download url into dest."""
        with self.gate.slot(self.host(url)):
            deadline = time.monotonic() + seconds
            for _ in range(MAX_REDIRECTS + 1):
                pool, target, headers = self.connection_pool(url)
                try:
                    response = pool.urlopen("GET", target, headers=headers,
                                            preload_content=False, redirect=False,
                                            assert_same_host=False)
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
                        raise status_error(response.status, self.failure(response),
                                           response.headers.get("Retry-After"))
                    length = response.headers.get("Content-Length")
                    # Accept-Encoding is identity: nothing to decode, so urllib3's decoding
                    # buffer is skipped.
                    fetched = copy_body(partial(response.read1, decode_content=False), dest,
                                        int(length) if length else None, deadline, self.block)
                    fetched.etag = response.headers.get("ETag", "").strip('"')
                    return fetched
                except Transient:
                    response.close()  # never hand a half-read connection back to the pool
                    raise
                finally:
                    response.release_conn()
            raise Refused(f"more than {MAX_REDIRECTS} redirects")

    def failure(self, response: urllib3.BaseHTTPResponse) -> str:
        """How an error answer is named; its body is read and dropped."""
        response.drain_conn()
        return self.where


class S3Source(HttpSource):
    """Unsigned GETs of objects of a CVDF-layout bucket; the MD5 checked against the ETag."""

    where = "s3"

    def __init__(self, gate: HostGate, bucket: str, endpoint_url: str | None, connect: float,
                 read: float, block: int) -> None:
        super().__init__(gate, connect, read, block)
        self.base = bucket_url(bucket, endpoint_url)
        self.bucket_host = urlsplit(self.base).netloc

    def host(self, key: str) -> str:
        return self.bucket_host

    def fetch(self, key: str, dest: Path, seconds: float) -> Fetched:
        """Download s3://bucket/key into dest."""
        fetched = super().fetch(self.base + quote(key), dest, seconds)
        # A single-part object's ETag is the MD5 of its bytes: a free end-to-end check.
        if MD5_ETAG.fullmatch(fetched.etag) and fetched.etag != fetched.md5:
            raise Transient(f"bytes differ from the object: md5 {fetched.md5}, "
                            f"ETag {fetched.etag}")
        return fetched

    def failure(self, response: urllib3.BaseHTTPResponse) -> str:
        """"s3 <Code>" from the XML error S3 answers with (NoSuchKey, AccessDenied, SlowDown)."""
        try:
            found = S3_CODE.search(response.read(ERROR_BODY, decode_content=False))
        except NETWORK_ERRORS:
            found = None
        response.drain_conn()
        return f"s3 {found.group(1).decode()}" if found else "s3"


def bucket_url(bucket: str, endpoint_url: str | None) -> str:
    """The URL prefix of a bucket's objects: virtual-hosted on AWS (its recommended style,
    which reaches the bucket's region from any endpoint), path-style anywhere else (MinIO,
    moto, a local mirror), as boto3 addresses them."""
    endpoint = (endpoint_url or "https://s3.amazonaws.com").rstrip("/")
    parts = urlsplit(endpoint)
    if parts.hostname and parts.hostname.endswith(".amazonaws.com") and \
            re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", bucket):
        return f"{parts.scheme}://{bucket}.{parts.netloc}{parts.path}/"
    return f"{endpoint}/{bucket}/"


def ca_bundle() -> str | None:
    """certifi's CA bundle, which boto3 and requests use too (slim images may lack the
    system's)."""
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()
