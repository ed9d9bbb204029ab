"""The image store's manifest: one row per image, crash-safe.

Results go first to append-only JSON-lines journals, one per chunk of work and process, each
line written whole and flushed as the result arrives, each journal flock-ed by its writer.
`compact` folds the journals into `manifest.parquet` (atomically, under a store lock) and
deletes the journals no live process holds, so a run killed at any point loses at most the
images in flight, and chunks in different processes never write the same file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from model.atomic import write_parquet

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
JOURNALS = ".journal"
LOCK = ".manifest.lock"
COLUMNS = ["ImageID", "Subset", "Source", "Status", "Path", "Bytes", "MD5", "Error",
           "Attempts", "Seconds", "Time"]
INTEGERS = ("Bytes", "Attempts")
HOST = socket.gethostname().replace(".", "_")
STALE_FOREIGN_TEMP = 24 * 3600  # seconds; a temp file of another host is left alone until then


def image_path(store: Path, subset: str, image_id: str) -> Path:
    """Where an image lives in the store: the layout of the CVDF bucket."""
    return store / subset / f"{image_id}.jpg"


def empty() -> pd.DataFrame:
    """A manifest without rows."""
    return normalise(pd.DataFrame(columns=COLUMNS))


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns and types of the current format (older manifests said "missing" for gone)."""
    frame = frame.copy()
    for column in COLUMNS:
        if column not in frame:
            frame[column] = 0 if column in INTEGERS else 0.0 if column == "Seconds" else ""
    frame["Status"] = frame.Status.replace({"missing": "gone"})
    frame["Path"] = frame.Subset.astype(str) + "/" + frame.ImageID.astype(str) + ".jpg"
    for column in INTEGERS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").fillna(0).astype("int64")
    frame["Seconds"] = pd.to_numeric(frame.Seconds, errors="coerce").fillna(0.0)
    text = [c for c in COLUMNS if c not in (*INTEGERS, "Seconds")]
    frame[text] = frame[text].fillna("").astype(str)
    return frame[COLUMNS].reset_index(drop=True)


class Journal:
    """One writer's append-only JSON-lines file, locked while open."""

    def __init__(self, store: Path, name: str, fsync: bool = False) -> None:
        folder = store / JOURNALS
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        # Locked before it gets the name compaction looks for, so it is never taken for dead.
        fresh = self.path.with_suffix(".new")
        self.fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.rename(fresh, self.path)
        self.fsync = fsync

    def write(self, row: dict) -> None:
        """Append one result as one line with one write call."""
        os.write(self.fd, (json.dumps(row, default=str) + "\n").encode())
        if self.fsync:
            os.fsync(self.fd)

    def close(self) -> None:
        """Close the file, releasing its lock."""
        os.close(self.fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: Path) -> list[dict]:
    """The rows of a journal; a torn last line (a writer killed mid-line) is dropped."""
    rows = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is torn; ignored", path, number)
    return rows


def _held(path: Path) -> bool:
    """Whether a live process still writes this journal (holds its lock)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Serialise compactions of one store, across processes."""
    store.mkdir(parents=True, exist_ok=True)
    fd = os.open(store / LOCK, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_manifest(store: Path) -> pd.DataFrame:
    """The compacted manifest of a store (journals not folded in)."""
    path = store / MANIFEST
    return normalise(pd.read_parquet(path)) if path.exists() else empty()


def merge(old: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    """Old rows updated by newer ones: the latest result per image wins."""
    if not rows:
        return old
    new = normalise(pd.DataFrame(rows))
    both = pd.concat([old, new], ignore_index=True) if len(old) else new
    both = both.sort_values("Time", kind="stable").drop_duplicates("ImageID", keep="last")
    return both.sort_values("ImageID").reset_index(drop=True)


def compact(store: Path) -> pd.DataFrame:
    """Fold every journal into manifest.parquet atomically; return the whole manifest."""
    with store_lock(store):
        manifest = read_manifest(store)
        journals = sorted((store / JOURNALS).glob("*.jsonl"))
        rows = [row for path in journals for row in read_journal(path)]
        if rows:
            manifest = merge(manifest, rows)
            write_parquet(store / MANIFEST, manifest)
        for path in journals:  # folded in: a finished or dead writer's journal can go
            if not _held(path):
                path.unlink()
    return manifest


def temp_path(dest: Path, serial: int) -> Path:
    """A temporary file beside dest, named after this host and process so that a later run
    can tell a dead run's leftovers from a live run's work."""
    return dest.with_name(f".{dest.name}.{HOST}.{os.getpid()}.{serial}.part")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temps(store: Path) -> int:
    """Delete temp files left by dead runs; return how many went."""
    removed, now = 0, time.time()
    for folder in (p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        with os.scandir(folder) as entries:
            for entry in entries:
                if not (entry.name.startswith(".") and entry.name.endswith(".part")):
                    continue
                parts = entry.name[: -len(".part")].rsplit(".", 3)
                mine = len(parts) == 4 and parts[1] == HOST and parts[2].isdigit()
                if (not _alive(int(parts[2]))) if mine else \
                        now - entry.stat().st_mtime > STALE_FOREIGN_TEMP:
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
    if removed:
        log.info("removed %d temporary files left by interrupted runs", removed)
    return removed
