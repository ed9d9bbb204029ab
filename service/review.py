"""The review queue: the kept uploads nobody labelled yet, least certain first.

It is read from the prediction log's store (a folder or an S3 prefix), so replicas sharing a
prefix see the same queue. Each worker keeps an index of what it has read: a look lists the
log and feedback folders, reads only the parts it has not read yet (the kept rows and the
columns it needs) and forgets those evicted since. The shadow replay's disagreements
(SHADOW_FILE, written by the pipeline) are read again when the file changes.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatch
from typing import Any

import numpy as np
import pyarrow as pa

from model.predictions import LOG_SCHEMA, PART_GLOB, SHADOW_FILE, image_name, read_part
from service.logstore import LocalStore, S3Store
from service.reviewapi import IMAGE_NAME

log = logging.getLogger("openimager.service")
COLUMNS = ["request_id", "time", "sha256", "format", "model", "classes", "probabilities",
           "top_label", "top_probability", "top_hash"]
# The shadow file is read again when its size or time changes, and at least this often (a
# rewrite within the store's time resolution keeps both).
SHADOW_SECONDS = 60.0
TOP = 3  # labels shown per item


@dataclass(frozen=True, slots=True)  # slots: a worker may hold tens of thousands
class Kept:
    """One kept upload's log row, with what the queue sorts on worked out once (the rest of
    an item is made only for the items answered)."""

    request_id: str
    at: float  # its time, in epoch seconds
    sha256: str
    format: str
    model: str
    top_hash: str | None
    classes: tuple[str, ...]
    labels: tuple[tuple[str, float], ...]  # the top TOP, most likely first
    top_label: str
    top_probability: float
    margin: float  # top-1 minus top-2 probability
    entropy: float  # of all the probabilities, in nats


@dataclass(frozen=True)
class Shadow:
    """The shadow replay's last comparison: the two models and the uploads they disagree on."""

    candidate: str | None
    incumbent: str | None
    at: str | None
    disagreements: dict[str, dict[str, Any]]  # by sha256

    def summary(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "incumbent": self.incumbent, "at": self.at}

    def entry(self, sha256: str) -> dict[str, Any] | None:
        """What the two models answered for an upload, None when it is not listed."""
        found = self.disagreements.get(sha256)
        if found is None:
            return None
        return {"candidate": self.candidate,
                "candidate_label": found.get("candidate_label"),
                "candidate_probability": found.get("candidate_probability"),
                "incumbent": self.incumbent,
                "incumbent_label": found.get("incumbent_label"),
                "incumbent_probability": found.get("incumbent_probability")}


def figures(probs: np.ndarray) -> tuple[list[list[int]], list[float], list[float]]:
    """For rows of probabilities (one row per image): the TOP classes most likely first, the
    margin (top-1 minus top-2) and the entropy (nats), as Python lists."""
    order = np.argsort(-probs, axis=1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=1)
    second = ranked[:, 1] if probs.shape[1] > 1 else np.zeros(len(probs))
    logs = np.log(np.where(probs > 0, probs, 1.0))  # 0 log 0 counts as 0
    return (order[:, :TOP].tolist(), (ranked[:, 0] - second).tolist(),
            (-(probs * logs).sum(axis=1)).tolist())


def read_kept(source: Any) -> list[Kept]:
    """The kept rows of one log part (older parts lack top_hash: null)."""
    table = read_part(source, schema=LOG_SCHEMA, columns=COLUMNS, filters=[("kept", "=", True)])
    # Times as numbers and probabilities apart: Python datetimes and per-row numpy calls
    # made a first look at a large log several times slower.
    times = table.column("time").cast(pa.int64()).to_pylist()  # microseconds
    probs = table.column("probabilities").to_pylist()
    rows = table.drop_columns(["time", "probabilities"]).to_pylist()
    kept: list[Kept | None] = [None] * len(rows)
    shared: dict[Any, Any] = {}  # one copy of each model's tag and classes per part, not per row
    for size in {len(p) for p in probs} - {0}:  # a part may span a model swap: a pass a size
        which = [i for i, p in enumerate(probs) if len(p) == size]
        matrix = np.asarray([probs[i] for i in which], np.float64).reshape(len(which), size)
        for i, order, margin, entropy in zip(which, *figures(matrix), strict=True):
            row = rows[i]
            classes = shared.setdefault(tuple(row["classes"]), tuple(row["classes"]))
            kept[i] = Kept(row["request_id"], times[i] / 1e6, row["sha256"],
                           shared.setdefault(row["format"], row["format"]),
                           shared.setdefault(row["model"], row["model"]),
                           shared.setdefault(row["top_hash"], row["top_hash"]), classes,
                           tuple((classes[c], probs[i][c]) for c in order),
                           shared.setdefault(row["top_label"], row["top_label"]),
                           row["top_probability"], margin, entropy)
    return [row for row in kept if row is not None]


def read_answered(source: Any) -> frozenset[str]:
    """The request ids one feedback part corrects."""
    return frozenset(read_part(source, columns=["request_id"]).column(0).to_pylist())


def parse_shadow(data: bytes) -> Shadow | None:
    """SHADOW_FILE's content; None when it is not the documented object (entries without a
    sha256 are left out)."""
    try:
        found = json.loads(data)
    except ValueError:
        return None
    if not isinstance(found, dict) or not isinstance(found.get("disagreements"), list):
        return None
    entries = {entry["sha256"]: entry for entry in found["disagreements"]
               if isinstance(entry, dict) and isinstance(entry.get("sha256"), str)}
    text = {k: found.get(k) if isinstance(found.get(k), str) else None
            for k in ("candidate", "incumbent", "at")}
    return Shadow(text["candidate"], text["incumbent"], text["at"], entries)


def sort_key(order: str, shadow: Shadow | None) -> Callable[[Kept], tuple]:
    """How an order (one of service.reviewapi.ORDERS) sorts the queue; ties go to the newest
    upload first."""
    listed = shadow.disagreements if shadow else {}

    def disagrees(row: Kept) -> bool:
        found = listed.get(row.sha256)
        return found is not None and found.get("candidate_label") != found.get(
            "incumbent_label")

    if order == "entropy":
        return lambda row: (-row.entropy, row.margin, -row.at)
    if order == "disagreement":
        return lambda row: (not disagrees(row), row.margin, -row.at)
    return lambda row: (row.margin, -row.at)


def described(row: Kept, shadow: Shadow | None) -> dict[str, Any]:
    """An item of GET /review's answer."""
    return {"request_id": row.request_id, "sha256": row.sha256,
            "image": f"review/images/{image_name(row.sha256, row.format)}",
            "time": datetime.fromtimestamp(row.at, UTC).isoformat(), "model": row.model,
            "top_hash": row.top_hash, "classes": list(row.classes),
            "labels": [{"label": label, "probability": round(p, 6)} for label, p in row.labels],
            "top_label": row.top_label, "top_probability": round(row.top_probability, 6),
            "margin": round(row.margin, 6), "entropy": round(row.entropy, 4),
            "disagreement": shadow.entry(row.sha256) if shadow else None}


class ReviewQueue:
    """One worker's index of a store's kept uploads and feedback; thread-safe."""

    def __init__(self, store: LocalStore | S3Store,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.clock = store, clock
        self.lock = threading.Lock()
        self.kept: dict[str, list[Kept]] = {}  # by log part
        self.answered: dict[str, frozenset[str]] = {}  # by feedback part
        self.shadow: Shadow | None = None
        self.shadow_seen: tuple[int, float] | None = None  # its size and time when read
        self.shadow_read = -math.inf

    def answer(self, order: str = "margin", limit: int = 50) -> dict[str, Any]:
        """GET /review's answer: the queue in an order (one of service.reviewapi.ORDERS), its
        first limit items. Blocks on the store: run it in a thread."""
        with self.lock:
            self.refresh()
            rows, shadow = self.pending(), self.shadow
        first = heapq.nsmallest(limit, rows, key=sort_key(order, shadow))
        return {"items": [described(row, shadow) for row in first], "total": len(rows),
                "order": order, "shadow": shadow.summary() if shadow else None}

    def refresh(self) -> None:
        """Read the parts written since the last look, forget the evicted ones."""
        self.kept = self.sync("log", self.kept, read_kept, [])
        self.answered = self.sync("feedback", self.answered, read_answered, frozenset())
        self.read_shadow()

    def sync(self, folder: str, index: dict[str, Any], read: Callable[[Any], Any],
             unreadable: Any) -> dict[str, Any]:
        """index for the parts folder holds now: those read before kept, new ones read."""
        fresh = {}
        for entry in sorted(self.store.entries(folder), key=lambda e: e.key):
            if not fnmatch(entry.key.rpartition("/")[2], PART_GLOB):
                continue
            if entry.key in index:
                fresh[entry.key] = index[entry.key]
                continue
            try:
                fresh[entry.key] = read(self.store.source(entry.key))
            except FileNotFoundError:  # evicted since the listing
                continue
            except (pa.ArrowException, ValueError, LookupError, TypeError) as error:
                # not a part of the log's schema: read it once, not at every look
                log.warning("review queue: %s in %s is unreadable: %s", entry.key, self.store,
                            error)
                fresh[entry.key] = unreadable
        return fresh

    def pending(self) -> list[Kept]:
        """The newest row of each kept upload none of whose requests has feedback."""
        answered = frozenset().union(*self.answered.values())
        newest: dict[str, Kept] = {}
        done: set[str] = set()
        for part in sorted(self.kept):  # names sort oldest first
            for row in self.kept[part]:
                if row.request_id in answered:
                    done.add(row.sha256)
                current = newest.get(row.sha256)
                if current is None or row.at >= current.at:
                    newest[row.sha256] = row
        return [row for sha, row in newest.items() if sha not in done]

    def read_shadow(self) -> None:
        """Read SHADOW_FILE again when it changed or is old; missing or unreadable, it lists
        no disagreements."""
        folder = SHADOW_FILE.rpartition("/")[0]
        try:
            found = [e for e in self.store.entries(folder) if e.key == SHADOW_FILE]
            if not found:
                self.shadow, self.shadow_seen = None, None
                return
            seen = (found[0].size, found[0].mtime)
            if seen == self.shadow_seen and self.clock() - self.shadow_read < SHADOW_SECONDS:
                return
            self.shadow = parse_shadow(self.store.read(SHADOW_FILE))
        except Exception as error:  # noqa: BLE001 - the queue works without it
            log.warning("review queue: cannot read %s in %s: %s", SHADOW_FILE, self.store,
                        error)
            self.shadow, seen = None, None
        if self.shadow is None and seen is not None:
            log.warning("review queue: %s in %s is not a shadow report", SHADOW_FILE,
                        self.store)
        self.shadow_seen, self.shadow_read = seen, self.clock()

    def image(self, name: str) -> bytes | None:
        """A kept upload's bytes by its file name; None for a name that is not one, or a
        file that is gone."""
        if not IMAGE_NAME.fullmatch(name):
            return None
        try:
            return self.store.read(f"images/{name}")
        except FileNotFoundError:
            return None

