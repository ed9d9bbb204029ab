"""The worker side of the download: one thread pool fetching chunks of images, with per-host
limits, retries (exponential backoff, jitter, Retry-After), verification and a journal line
per result. A chunk is plain data, so it runs the same in a thread, a process or on Dask.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from flows.openimages import manifest as mf
from flows.openimages.imagecheck import BadImage, check_image, check_original, published
from flows.openimages.manifest import image_path
from flows.openimages.sources import (
    Fetched,
    Gone,
    HostGate,
    HttpSource,
    Refused,
    S3Source,
    Transient,
)

log = logging.getLogger(__name__)

URL_COLUMNS = {"flickr": "OriginalURL", "thumbnail": "Thumbnail300KURL"}


@dataclass(frozen=True)
class DownloadOptions:
    """How to download (download_options in flows/pipeline/stages.py maps OPENIMAGER_*)."""

    sources: tuple[str, ...] = ("cvdf",)  # tried in order until one delivers
    bucket: str = "open-images-dataset"
    endpoint_url: str | None = "https://s3.amazonaws.com"
    workers: int = 64  # requests in flight per process
    per_host: int = 64  # of which at most this many to one host
    retries: int = 4  # further attempts per source after a transient failure
    backoff: float = 0.5  # seconds before the first retry, doubling, with jitter
    backoff_max: float = 60.0  # longest wait; a longer Retry-After fails the image for now
    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # longest silence on a connection
    deadline: float = 300.0  # longest time for one response, however it trickles
    read_bytes: int = 1 << 20  # per receive of a body streamed to disk (over IN_MEMORY)
    chunk_images: int = 500  # images per chunk (one Prefect task each)
    verify: bool = False  # re-check files already in the store
    placeholder_md5s: tuple[str, ...] = ()  # hex MD5s of known "photo unavailable" images
    fsync: bool = False  # fsync files and journal lines (power loss, not just kill -9)
    progress: bool = True


@dataclass
class Chunk:
    """Images to fetch, as records; `Check` marks files on disk to verify before fetching."""

    store: str
    name: str
    items: list[dict] = field(default_factory=list)


class Downloader:
    """Fetches images on a thread pool, with per-host limits, retries and verification."""

    def __init__(self, options: DownloadOptions) -> None:
        self.options = options
        self.gate = HostGate(options.per_host, options.workers)
        self.serial = itertools.count()
        self._sources: dict[str, HttpSource | S3Source] = {}
        self._lock = threading.Lock()

    def source(self, name: str) -> HttpSource | S3Source:
        """The client of a source, made once per downloader (boto3 only if asked for)."""
        if name in self._sources:
            return self._sources[name]
        with self._lock:
            if name not in self._sources:
                o = self.options
                self._sources[name] = (
                    S3Source(self.gate, o.bucket, o.endpoint_url, o.connect_timeout,
                             o.read_timeout, o.read_bytes) if name == "cvdf" else
                    HttpSource(self.gate, o.connect_timeout, o.read_timeout, o.read_bytes))
            return self._sources[name]

    def run(self, chunks: list[Chunk]) -> list[dict]:
        """Download every chunk on `workers` threads; return each chunk's status counts."""
        jobs = iter([(c, item) for c in chunks for item in c.items])
        total = sum(len(c.items) for c in chunks)
        counts = {c.name: Counter() for c in chunks}
        journals = {c.name: mf.Journal(Path(c.store), c.name, self.options.fsync) for c in chunks}
        lock, stop = threading.Lock(), threading.Event()
        failures: list[BaseException] = []

        def work() -> None:
            # Each thread takes the next image itself and counts it under the same lock: no
            # future per image and no wake-up of the main thread per result.
            done = None
            try:
                while True:
                    with lock:
                        if done is not None:
                            counts[done[0]][done[1]] += 1
                            progress.add(done[1])
                        job = None if stop.is_set() else next(jobs, None)
                    if job is None:
                        return
                    chunk, item = job
                    done = chunk.name, self.one(Path(chunk.store), item,
                                                journals[chunk.name])["Status"]
            except BaseException as error:  # noqa: BLE001 - re-raised by the main thread
                failures.append(error)
                stop.set()

        try:
            with Progress(total, self.options.progress) as progress:
                threads = [threading.Thread(target=work, name=f"download-{n}", daemon=True)
                           for n in range(min(self.options.workers, total))]
                for thread in threads:
                    thread.start()
                try:
                    for thread in threads:
                        thread.join()
                except BaseException:  # Ctrl-C: stop at the images in flight, not at the end
                    stop.set()
                    for thread in threads:
                        thread.join()
                    raise
            if failures:
                raise failures[0]
        finally:
            for journal in journals.values():
                journal.close()
        where = {"host": mf.HOST, "pid": os.getpid()}
        return [{"chunk": name, "images": sum(c.values()), **c, **where}
                for name, c in counts.items()]

    def one(self, store: Path, item: dict, journal: mf.Journal) -> dict:
        """Settle one image: keep a verified copy, or fetch it from the first source that
        delivers; journal the result (before the rename: a kill in between only costs a
        re-download); never raise."""
        start, attempts, errors, tried = time.monotonic(), [0], [], []
        dest = image_path(store, item["Subset"], item["ImageID"])
        row = {"ImageID": item["ImageID"], "Subset": item["Subset"]}
        if item.get("Check"):
            try:
                return self._keep(dest, item, row, journal, start)
            except (BadImage, OSError) as error:
                log.warning("%s: the copy in the store is rejected (%s); fetching it again",
                            dest, error)
                errors.append(f"copy on disk rejected: {error}")
                dest.unlink(missing_ok=True)
        tmp = mf.temp_path(dest, next(self.serial))
        try:
            for name in self.options.sources:
                target = self._target(name, item)
                if not target:
                    errors.append(f"{name}: no {URL_COLUMNS[name]}")
                    continue
                tried.append(name)
                try:
                    fetched = self._retrying(name, target, tmp, item, attempts)
                except (Gone, Refused, Transient, BadImage) as error:
                    errors.append(f"{name}: {error}")
                    if not isinstance(error, Gone):
                        row["Status"] = "failed"
                    continue
                except Exception as error:  # noqa: BLE001 - recorded; the run goes on
                    errors.append(f"{name}: {type(error).__name__}: {error}")
                    row["Status"] = "failed"
                    continue
                return self._land(tmp, dest, journal, row, name, fetched, attempts[0], start)
            status = row.get("Status", "gone" if tried else "failed")
            # Every source asked: a later run with another source list asks again.
            self._journal(journal, row, ",".join(self.options.sources), status, 0, "",
                          "; ".join(errors), attempts[0], start)
            return row
        finally:
            if row.get("Status") != "ok":  # landed means renamed: skip a syscall per image
                tmp.unlink(missing_ok=True)

    def _land(self, tmp: Path, dest: Path, journal: mf.Journal, row: dict, source: str,
              fetched: Fetched, attempts: int, start: float) -> dict:
        """Journal the verified file, then rename it into place."""
        try:
            if self.options.fsync:
                with tmp.open("rb") as handle:
                    os.fsync(handle.fileno())
            self._journal(journal, row, source, "ok", fetched.size, fetched.md5, "", attempts,
                          start)
            os.replace(tmp, dest)
        except OSError as error:  # a full or failing disk: recorded, retried next run
            self._journal(journal, row, source, "failed", 0, "",
                          f"{source}: storing failed: {error}", attempts, start)
        return row

    def _keep(self, dest: Path, item: dict, row: dict, journal: mf.Journal,
              start: float) -> dict:
        """Verify a file already in the store and record it; raise BadImage if it is not."""
        prior = item.get("Prior") or {}
        body = dest.read_bytes()  # read once for the MD5 and the check
        size, md5 = len(body), hashlib.md5(body).hexdigest()
        if prior and (size != prior["Bytes"] or (prior["MD5"] and md5 != prior["MD5"])):
            raise BadImage(f"{size} bytes, md5 {md5}; recorded {prior['Bytes']}, "
                           f"{prior['MD5']}")
        if prior.get("Source") == "flickr":
            check_original(size, md5, item.get("OriginalSize"), item.get("OriginalMD5"))
        check_image(body)
        self._journal(journal, row, prior.get("Source", "store"), "ok", size, md5, "",
                      int(prior.get("Attempts", 0)), start)
        return row

    def _target(self, name: str, item: dict) -> str:
        """The key or URL of the image at a source ("" when it has none)."""
        if name == "cvdf":
            return f"{item['Subset']}/{item['ImageID']}.jpg"
        url = item.get(URL_COLUMNS[name])
        return str(url).strip() if published(url) else ""

    def _retrying(self, name: str, target: str, tmp: Path, item: dict,
                  attempts: list[int]) -> Fetched:
        """Fetch and verify, retrying transient failures with backoff, jitter and
        Retry-After."""
        source, o = self.source(name), self.options
        for attempt in itertools.count(1):
            attempts[0] += 1
            try:
                fetched = source.fetch(target, tmp, o.deadline)
                if fetched.md5 in o.placeholder_md5s:
                    raise Gone("photo unavailable (placeholder image)")
                if name == "flickr":
                    check_original(fetched.size, fetched.md5, item.get("OriginalSize"),
                                   item.get("OriginalMD5"))
                check_image(fetched.body if fetched.body is not None else tmp.read_bytes())
                fetched.body = None  # checked: no need to hold it any longer
                return fetched
            except Transient as error:
                wait = error.retry_after
                if attempt > o.retries:
                    raise Transient(f"{error} ({attempt} attempts)") from error
                if wait is not None and wait > o.backoff_max:
                    raise Transient(f"{error}; asked to wait {wait:.0f} s") from error
                if wait is not None:
                    self.gate.pause(source.host(target), wait)
                else:
                    wait = min(o.backoff_max, o.backoff * 2 ** (attempt - 1))
                    wait *= random.uniform(0.5, 1.0)  # jitter: clients hit by one fault spread
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _journal(self, journal: mf.Journal, row: dict, source: str, status: str, size: int,
                 md5: str, error: str, attempts: int, start: float) -> None:
        row.update(Source=source, Status=status, Path=f"{row['Subset']}/{row['ImageID']}.jpg",
                   Bytes=size, MD5=md5, Error=error, Attempts=attempts,
                   Seconds=round(time.monotonic() - start, 3),
                   Time=datetime.now(UTC).isoformat(timespec="microseconds"))
        journal.write(row)


class Progress:
    """A progress bar with the count of each status beside rate and ETA."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.counts: Counter = Counter()
        self.bar = tqdm(total=total, desc="download", unit="img", mininterval=0.5,
                        disable=not enabled or not total, file=sys.stderr)
        self.shown = 0.0

    def add(self, status: str) -> None:
        self.counts[status] += 1
        self.bar.update()
        if time.monotonic() - self.shown > 0.5:
            self.shown = time.monotonic()
            self.bar.set_postfix(self.counts, refresh=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.set_postfix(self.counts, refresh=False)
        self.bar.close()


def run_chunks(chunks: list[Chunk], options: DownloadOptions) -> list[dict]:
    """Run chunks in this process, on one thread pool; return each chunk's status counts."""
    return Downloader(options).run(chunks)
