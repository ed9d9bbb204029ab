"""The prediction log's writer: rows from the HTTP workers, Parquet parts from a thread.

A request only appends one item to a bounded list (never waiting: when it is full the rows
are dropped and counted); a background thread wakes a few times a second, turns the items
into rows and writes a part every `part_rows` rows or `part_seconds` seconds, then evicts the
oldest files over the size bound. A crash loses the rows not yet in a part; SIGTERM writes
them (close()).
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
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from model.predictions import FEEDBACK_SCHEMA, LOG_SCHEMA, PART_GLOB, image_name
from service.config import PredictionLogging
from service.images import FORMATS
from service.logstore import open_store

log = logging.getLogger("openimager.service")
QUEUE_ITEMS = 10_000  # requests waiting for the writer thread
RECENT_IDS = 100_000  # request ids remembered for /feedback without reading the log
# The writer wakes this often instead of at each request: a wake-up per request took the GIL
# from the event loop and decode threads hundreds of times a second.
TICK_SECONDS = 0.5
INLINE_BYTES = 256 * 1024  # uploads up to this size are described in the event loop


@dataclass(frozen=True)
class Upload:
    """What the log keeps of one uploaded image (data only when it is kept for labelling)."""

    sha256: str
    width: int
    height: int
    format: str
    data: bytes | None = None


def describe(path: Path, sample_rate: float) -> Upload:
    """Hash and header of an upload; its bytes too when the sample draws it."""
    data = path.read_bytes()
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
        self._thread: threading.Thread | None = None

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
        for request_id in item.request_ids:
            self.recent[request_id] = (item.model, item.classes)
        while len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)
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

    def part_key(self, folder: str) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        return f"{folder}/{PART_GLOB.replace('*', f'{stamp}-{os.getpid()}-{next(self._seq)}')}"

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
        """Delete the oldest log parts and kept images until both fit in max_mb."""
        files = self.store.entries("log") + self.store.entries("images")
        total = sum(f.size for f in files)
        limit = self.settings.max_mb * 2**20
        for entry in sorted(files, key=lambda f: (f.mtime, f.key)):
            if total <= limit:
                break
            self.store.delete(entry.key)
            total -= entry.size

    def answered_by(self, request_id: str) -> tuple[str, tuple[str, ...]] | None:
        """The model tag and classes that answered a request id, or None if it is unknown."""
        if request_id in self.recent:
            return self.recent[request_id]
        if not self.enabled:
            return None
        # Older than the memory: the parts on disk, newest first.
        for entry in sorted(self.store.entries("log"), key=lambda f: f.key, reverse=True):
            if not entry.key.endswith(".parquet"):
                continue
            table = pq.read_table(self.store.source(entry.key),
                                  columns=["request_id", "model", "classes"],
                                  filters=[("request_id", "=", request_id)])
            if table.num_rows:
                row = table.slice(0, 1).to_pylist()[0]
                return row["model"], tuple(row["classes"])
        return None

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


def small_uploads(paths: list[Path]) -> bool:
    """Whether uploads are small enough to hash and describe without leaving the event loop
    (a thread hop costs more than hashing a few hundred kB)."""
    try:
        return sum(path.stat().st_size for path in paths) <= INLINE_BYTES
    except OSError:
        return False


def describe_all(paths: list[Path], sample_rate: float) -> list[Upload] | None:
    """describe() for each upload; None when one cannot be read (the request failed)."""
    try:
        return [describe(path, sample_rate) for path in paths]
    except OSError:
        return None
