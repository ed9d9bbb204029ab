"""The prediction log's writer: rows from the HTTP workers, Parquet parts from a thread.

A request only appends one item to a bounded list (never waiting: when it is full the rows
are dropped and counted); a background thread wakes a few times a second, turns the items
into rows and writes a part every `part_rows` rows or `part_seconds` seconds, then evicts the
oldest files over the size bound. A crash loses the rows not yet in a part; SIGTERM writes
them (close()).

Replicas in separate containers share only the store (an S3 prefix): part names carry a random
id of the writing process, never its pid, so two replicas cannot overwrite each other's parts;
request ids carry the time they were made, so /feedback on any replica knows which parts can
hold an id and how long its answering worker may still take to write it.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import random
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from model.predictions import FEEDBACK_SCHEMA, LOG_SCHEMA, PART_GLOB, image_name, read_part
from service.config import PredictionLogging
from service.images import FORMATS
from service.logstore import Entry, open_store

log = logging.getLogger("openimager.service")
QUEUE_ITEMS = 10_000  # requests waiting for the writer thread
RECENT_IDS = 100_000  # request ids remembered for /feedback without reading the log
# The writer wakes this often instead of at each request: a wake-up per request took the GIL
# from the event loop and decode threads hundreds of times a second.
TICK_SECONDS = 0.5
INLINE_BYTES = 256 * 1024  # uploads up to this size are described in the event loop
STAMP = "%Y%m%dT%H%M%S"  # part names start with their UTC time: names sort oldest first
# /feedback for an id answered elsewhere (another worker or replica) whose part is not written
# yet waits for it: its time plus part_seconds plus this margin (the writer's tick, the
# upload), polling the store this often, never longer than FEEDBACK_MAX_WAIT in all and with
# at most FEEDBACK_WAITING lookups waiting per worker (the rest answer at once).
WRITE_MARGIN = 2 * TICK_SECONDS + 2.0
FEEDBACK_POLL = 0.5
FEEDBACK_MAX_WAIT = 30.0
FEEDBACK_WAITING = 16
# Clocks of replicas differ a little: an id made further ahead of this clock is no answer of
# ours, and parts stamped up to CLOCK_SLACK before an id's time are searched for it too.
CLOCK_SLACK = 60.0


def new_request_id() -> str:
    """32 hex digits laid out as a UUIDv7: the time in milliseconds, then 74 random bits."""
    millis = time.time_ns() // 1_000_000 & (1 << 48) - 1
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis << 80 | 7 << 76 | (rand >> 62 & 0xFFF) << 64 | 0b10 << 62
             | rand & (1 << 62) - 1)
    return f"{value:032x}"


def request_time(request_id: str) -> float | None:
    """When a request id of new_request_id() was made (epoch seconds); None for other ids
    (random ones of older versions)."""
    if len(request_id) != 32 or request_id[12] != "7" or request_id[16] not in "89ab":
        return None
    try:
        return int(request_id[:12], 16) / 1000
    except ValueError:
        return None


def part_stamp(at: float) -> str:
    """The start of the names of the parts written at epoch second at."""
    return datetime.fromtimestamp(at, UTC).strftime(STAMP)


@dataclass(frozen=True)
class Upload:
    """What the log keeps of one uploaded image (data only when it is kept for labelling)."""

    sha256: str
    width: int
    height: int
    format: str
    data: bytes | None = None


def describe(path: Path | bytes, sample_rate: float) -> Upload:
    """Hash and header of an upload (a file, or a body's bytes); its bytes too when the
    sample draws it."""
    data = path if isinstance(path, bytes) else path.read_bytes()
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height, fmt = image.width, image.height, image.format or ""
    except Exception:  # noqa: BLE001 - the decode reports bad uploads, not the log
        width = height = 0
        fmt = ""
    kept = sample_rate > 0 and random.random() < sample_rate
    return Upload(hashlib.sha256(data).hexdigest(), width, height, fmt, data if kept else None)


@dataclass(frozen=True)
class Answered:
    """One answered request, as queued by the request handler."""

    at: datetime
    endpoint: str
    request_ids: list[str]
    uploads: list[Upload]
    model: str
    classes: tuple[str, ...]
    probabilities: np.ndarray  # (images, classes)
    latency_ms: float
    top_hash: str | None = None  # the package revision the model was published as, if known


class PredictionLog:
    """Appends answered requests to the log and stores feedback; one per HTTP worker."""

    def __init__(self, settings: PredictionLogging) -> None:
        self.settings = settings
        self.store = open_store(settings.directory) if settings.enabled else None
        # deque.append and popleft are atomic: the request side takes no lock.
        self.pending: deque[Answered] = deque()
        self._stop = threading.Event()
        self.recent: OrderedDict[str, tuple[str, tuple[str, ...]]] = OrderedDict()
        self.dropped = 0  # rows lost to a full queue
        self.failed = 0  # rows lost to failed writes
        self.written = 0
        self._seq = itertools.count()
        self._writer = (os.getpid(), uuid.uuid4().hex[:16])
        self._thread: threading.Thread | None = None
        self.waiting = 0  # /feedback lookups waiting for another worker's part

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def start(self) -> None:
        """Start the writer thread (once)."""
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self.run, name="prediction-log", daemon=True)
            self._thread.start()

    def add(self, item: Answered) -> None:
        """Queue an answered request; never waits."""
        if not self.enabled:
            return
        self.remember(item.request_ids, (item.model, item.classes))
        if len(self.pending) >= QUEUE_ITEMS:
            self.dropped += len(item.request_ids)
        else:
            self.pending.append(item)

    def close(self, timeout: float = 30) -> None:
        """Write what is queued and stop the thread."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        """The thread: gather rows, write a part when full or old enough."""
        # pyarrow imports pandas the first time it builds a table (0.2 s of CPU or more): at
        # start, not while the first part's requests are being served.
        parquet([], LOG_SCHEMA)
        rows: list[dict] = []
        first = 0.0
        tick = min(TICK_SECONDS, self.settings.part_seconds)
        while True:
            stopping = self._stop.wait(tick)
            while self.pending:
                item = self.pending.popleft()
                if not rows:
                    first = time.monotonic()
                rows += self.rows(item)
                if len(rows) >= self.settings.part_rows:
                    self.flush(rows)
                    rows = []
            if stopping or (rows and time.monotonic() - first >= self.settings.part_seconds):
                self.flush(rows)
                rows = []
            if stopping:
                return

    def rows(self, item: Answered) -> list[dict]:
        """One row per image; kept uploads are stored here, beside the log."""
        out = []
        for request_id, upload, probs in zip(item.request_ids, item.uploads,
                                             item.probabilities, strict=True):
            top = int(np.argmax(probs))
            kept = upload.data is not None and self.keep(upload)
            out.append({"request_id": request_id, "time": item.at, "endpoint": item.endpoint,
                        "sha256": upload.sha256, "width": upload.width,
                        "height": upload.height, "format": upload.format, "model": item.model,
                        "classes": list(item.classes), "probabilities": probs.tolist(),
                        "top_label": item.classes[top], "top_probability": float(probs[top]),
                        "latency_ms": item.latency_ms, "kept": kept,
                        "top_hash": item.top_hash})
        return out

    def keep(self, upload: Upload) -> bool:
        """Store a sampled upload under its hash; False when that failed."""
        try:
            self.store.put(f"images/{image_name(upload.sha256, upload.format)}", upload.data)
            return True
        except Exception as error:  # noqa: BLE001 - logging never stops serving
            log.warning("prediction log: cannot keep an image in %s: %s", self.store, error)
            return False

    @property
    def writer(self) -> str:
        """This process's random id in part names: a pid repeats across containers (every
        replica may be pid 1), 64 random bits do not; a forked child draws its own."""
        if self._writer[0] != os.getpid():
            self._writer = (os.getpid(), uuid.uuid4().hex[:16])
        return self._writer[1]

    def part_key(self, folder: str) -> str:
        """part-<UTC second>-<writer>-<seq>: unique across processes and replicas, and in time
        order (the sequence is zero-padded, so one writer's parts of a second sort too)."""
        stamp = datetime.now(UTC).strftime(STAMP)
        name = f"{stamp}-{self.writer}-{next(self._seq):06d}"
        return f"{folder}/{PART_GLOB.replace('*', name)}"

    def flush(self, rows: list[dict]) -> None:
        """Write rows as one part, then keep the folder under its size bound."""
        if self.dropped:
            log.warning("prediction log: %d rows dropped so far (the writer fell behind)",
                        self.dropped)
        if not rows:
            return
        try:
            self.store.put(self.part_key("log"), parquet(rows, LOG_SCHEMA))
            self.written += len(rows)
            self.evict()
        except Exception as error:  # noqa: BLE001 - logging never stops serving
            self.failed += len(rows)
            log.warning("prediction log: %d rows not written to %s: %s", len(rows),
                        self.store, error)

    def evict(self) -> None:
        """Delete kept images over their own bounds (age, count, bytes), then the oldest log
        parts and kept images until both fit in max_mb."""
        images = self.evict_kept(self.store.entries("images"))
        files = self.store.entries("log") + images
        total = sum(f.size for f in files)
        limit = self.settings.max_mb * 2**20
        for entry in sorted(files, key=lambda f: (f.mtime, f.key)):
            if total <= limit:
                break
            self.store.delete(entry.key)
            total -= entry.size

    def evict_kept(self, images: list[Entry]) -> list[Entry]:
        """Delete the kept images older than kept_max_days, then the oldest over
        kept_max_images or kept_max_mb; return those that stay."""
        settings = self.settings
        cutoff = time.time() - settings.kept_max_days * 86400
        stay = []
        for entry in sorted(images, key=lambda f: (f.mtime, f.key)):
            if entry.mtime < cutoff:
                self.store.delete(entry.key)
            else:
                stay.append(entry)
        total, limit = sum(f.size for f in stay), settings.kept_max_mb * 2**20
        while stay and (len(stay) > settings.kept_max_images or total > limit):
            gone = stay.pop(0)
            self.store.delete(gone.key)
            total -= gone.size
        return stay

    def answered_by(self, request_id: str) -> tuple[str, tuple[str, ...]] | None:
        """The model tag and classes that answered a request id, or None if it is unknown:
        this worker's memory, then the parts in the store (every worker's and replica's) that
        can hold it, without waiting for parts not yet written."""
        if request_id in self.recent:
            return self.recent[request_id]
        if not self.enabled:
            return None
        return self.search(request_id, set())

    async def find(self, request_id: str) -> tuple[str, tuple[str, ...]] | None:
        """answered_by for /feedback: an id answered by another worker or replica moments ago
        may not be in a part yet, so this polls the store for new parts until that worker
        must have written it (the id's time, part_seconds, a margin; at most
        FEEDBACK_MAX_WAIT). Ids of older versions (no time) are looked up once, ids made more
        than CLOCK_SLACK ahead of this clock not at all."""
        if request_id in self.recent:
            return self.recent[request_id]
        if not self.enabled:
            return None
        made, now = request_time(request_id), time.time()
        if made is not None and made > now + CLOCK_SLACK:
            return None
        until = now if made is None else min(made + self.settings.part_seconds + WRITE_MARGIN,
                                             now + FEEDBACK_MAX_WAIT)
        searched: set[str] = set()
        waiting = False
        try:
            while True:
                found = await anyio.to_thread.run_sync(self.search, request_id, searched)
                if found is None and request_id in self.recent:  # answered here meanwhile
                    found = self.recent[request_id]
                if found is not None or time.time() >= until:
                    return found
                if not waiting:
                    if self.waiting >= FEEDBACK_WAITING:
                        return None
                    self.waiting, waiting = self.waiting + 1, True
                await anyio.sleep(min(FEEDBACK_POLL, max(until - time.time(), 0)))
        finally:
            if waiting:
                self.waiting -= 1

    def search(self, request_id: str, searched: set[str]) -> tuple[str, tuple[str, ...]] | None:
        """One look through the log parts not in searched (which it extends), newest first:
        only those written since the id was made when its time is known. A hit is
        remembered."""
        made = request_time(request_id)
        first = "" if made is None else f"log/part-{part_stamp(made - CLOCK_SLACK)}"
        entries = [entry for entry in self.store.entries("log", after=first)
                   if fnmatch(entry.key.rpartition("/")[2], PART_GLOB)
                   and entry.key >= first and entry.key not in searched]
        for entry in sorted(entries, key=lambda f: f.key, reverse=True):
            searched.add(entry.key)
            try:
                table = read_part(self.store.source(entry.key),
                                  columns=["request_id", "model", "classes"],
                                  filters=[("request_id", "=", request_id)])
            except FileNotFoundError:  # evicted since the listing
                continue
            if table.num_rows:
                row = table.slice(0, 1).to_pylist()[0]
                found = row["model"], tuple(row["classes"])
                self.remember([request_id], found)
                return found
        return None

    def remember(self, request_ids: list[str], answer: tuple[str, tuple[str, ...]]) -> None:
        """Keep request ids and what answered them, the last RECENT_IDS only."""
        for request_id in request_ids:
            self.recent[request_id] = answer
        while len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)

    def feedback(self, request_id: str, label: str, model: str) -> None:
        """Store one correction at once, as a part of its own."""
        row = {"request_id": request_id, "label": label, "time": datetime.now(UTC),
               "model": model}
        self.store.put(self.part_key("feedback"), parquet([row], FEEDBACK_SCHEMA))


def parquet(rows: list[dict], schema: pa.Schema) -> bytes:
    """Rows as the bytes of one Parquet file."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema), buffer)
    return buffer.getvalue()


def small_uploads(paths: list[Path | bytes]) -> bool:
    """Whether uploads are small enough to hash and describe without leaving the event loop
    (a thread hop costs more than hashing a few hundred kB)."""
    try:
        return sum(len(path) if isinstance(path, bytes) else path.stat().st_size
                   for path in paths) <= INLINE_BYTES
    except OSError:
        return False


def describe_all(paths: list[Path | bytes], sample_rate: float) -> list[Upload] | None:
    """describe() for each upload; None when one cannot be read (the request failed)."""
    try:
        return [describe(path, sample_rate) for path in paths]
    except OSError:
        return None
