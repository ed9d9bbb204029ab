"""Downloading each selected image once into a shared store: bounded, retried, verified, resumable.

`download_images` plans (compact the manifest, drop dead runs' temp files, skip what is
verified), cuts the rest into chunks, runs them (here on one thread pool, or as Prefect tasks
through `run_chunks`), and folds the chunks' journals into the manifest.

Statuses: `ok` (in the store, verified), `gone` (every source tried says the image no longer
exists: 404/410, NoSuchKey, Flickr's "photo unavailable"), `failed` (anything else: retries
used up, 403, a body that is not a decodable image or not the published bytes; retried by the
next run).
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flows.openimages import manifest as mf
from flows.openimages.downloader import Chunk, DownloadOptions
from flows.openimages.downloader import run_chunks as run_here
from flows.openimages.manifest import MANIFEST, image_path

__all__ = ["MANIFEST", "Chunk", "ChunkRunner", "DownloadOptions", "download_images", "image_path",
           "plan"]

log = logging.getLogger(__name__)

SOURCES = ("cvdf", "flickr", "thumbnail")
ITEM_COLUMNS = ["ImageID", "Subset", "OriginalURL", "Thumbnail300KURL", "OriginalSize",
                "OriginalMD5"]


ChunkRunner = Callable[[list[Chunk], DownloadOptions], list[dict]]


def among(ids: pd.Series, wanted: pd.Series) -> np.ndarray:
    """ids.isin(wanted) in Arrow: pandas converts each wanted id to an Arrow scalar first,
    which cost more CPU than downloading the image."""
    found = pc.is_in(pa.array(ids, type=pa.large_string(), from_pandas=True),
                     value_set=pa.array(wanted, type=pa.large_string(), from_pandas=True))
    return found.to_numpy(zero_copy_only=False).astype(bool)


def plan(images: pd.DataFrame, store: Path, options: DownloadOptions) -> tuple[list[Chunk], int]:
    """The chunks of work for a selection, and how many of its images are already settled."""
    store.mkdir(parents=True, exist_ok=True)
    mf.clean_temps(store)
    whole = mf.compact(store)
    ours = whole[among(whole.ImageID, images.ImageID)]
    known = {r["ImageID"]: r for r in ours.to_dict("records")}
    todo, settled = [], 0
    columns = [c for c in ITEM_COLUMNS if c in images]
    for item in images.drop_duplicates("ImageID")[columns].to_dict("records"):
        dest = image_path(store, item["Subset"], item["ImageID"])
        row = known.get(item["ImageID"], {})
        try:  # one stat, not an exists() and a stat()
            size = dest.stat().st_size
        except FileNotFoundError:
            size = -1
        if row.get("Status") == "ok" and size == row["Bytes"]:
            if not options.verify:  # verified when it arrived: not read again
                settled += 1
                continue
        elif row.get("Status") == "gone" and size < 0 and \
                set(options.sources) <= set(row["Source"].split(",")):
            settled += 1  # every source asked has said it is gone
            continue
        prior = row if row.get("Status") == "ok" else {}
        todo.append({**item, "Check": size >= 0, "Prior": prior})
    for subset in {item["Subset"] for item in todo}:
        (store / subset).mkdir(exist_ok=True)
    run = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"  # runs may overlap
    step = max(1, options.chunk_images)
    chunks = [Chunk(str(store), f"{run}-{n:04d}", todo[i:i + step])
              for n, i in enumerate(range(0, len(todo), step))]
    return chunks, settled


def download_images(images: pd.DataFrame, store: Path, options: DownloadOptions | None = None,
                    run_chunks: ChunkRunner | None = None, **overrides: object) -> pd.DataFrame:
    """Bring every image of a selection into the store; return its manifest rows."""
    options = replace(options or DownloadOptions(), **overrides)
    unknown = set(options.sources) - set(SOURCES)
    if unknown or not options.sources:
        raise ValueError(f"image sources must be among {SOURCES}, got {options.sources}")
    store, start = Path(store), time.monotonic()
    chunks, settled = plan(images, store, options)
    reports = (run_chunks or run_here)(chunks, options) if chunks else []
    whole = mf.compact(store)
    rows = whole[among(whole.ImageID, images.ImageID)]
    missing = images[~among(images.ImageID, rows.ImageID)].drop_duplicates("ImageID")
    if len(missing):  # a chunk that never reported: retried by the next run
        crashed = "; ".join(str(r.get("error")) for r in reports if r.get("error"))
        rows = pd.concat([rows, mf.normalise(missing[["ImageID", "Subset"]].assign(
            Status="failed", Error=f"not downloaded: its chunk failed ({crashed or '?'})"))])
    rows = rows.sort_values("ImageID").reset_index(drop=True)
    rows["Path"] = [str(store / p) for p in rows.Path]
    summarise(rows, settled, time.monotonic() - start, options.progress)
    return rows


def summarise(rows: pd.DataFrame, settled: int, seconds: float, show: bool) -> str:
    """One line of counts per status, logged (and printed when progress is shown)."""
    counts = rows.Status.value_counts()
    fetched = len(rows) - settled
    line = (f"download: {len(rows)} images: {counts.get('ok', 0)} ok, {counts.get('gone', 0)} "
            f"gone, {counts.get('failed', 0)} failed; {settled} already settled, {fetched} "
            f"handled in {seconds:.1f} s ({fetched / max(seconds, 1e-9):.0f} img/s)")
    reasons = rows[rows.Status != "ok"].Error.str.slice(0, 100).value_counts().head(3)
    if len(reasons):
        line += "; most common reasons: " + "; ".join(f"{n}x {r}" for r, n in reasons.items())
    if show:
        print(line, file=sys.stderr, flush=True)
    else:
        log.info(line)
    return line
