"""Cropping a whole selection: plan the work in chunks, run them anywhere, reuse earlier crops.

`crop_boxes` keeps the previous run's crops that still hold, cuts the rest into chunks of
whole images, runs them (on a local process pool, or as Prefect tasks on threads or Dask
through `run_chunks`), and joins the outcomes to the boxes. A chunk is plain data (JSON-ready),
so it can travel to another process or machine. Its crops become one shard: written into
the chunk's shard folder when it has one, else returned in its report (a worker that sees no
disk of the flow's), for the flow to write. An image path may be an http(s):// URL of the
image source (`source_manifest`): then a worker needs no disk of the flow's at all.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import BinaryIO

import pandas as pd
from tqdm import tqdm

from flows.openimages.crop import (
    CROP_FORMAT,
    CropOptions,
    crop_image,
    records_by_image,
)
from flows.openimages.shards import shard_bytes, shard_name, write_shard

OUTCOME_COLUMNS = ["BoxID", "Status", "Error", "CropPath", "Width", "Height", "Shard", "Row"]
# What a shard row takes from the image besides its boxes (the planner fills them in).
IMAGE_INFO = ["Split", "Author", "License", "OriginalLandingURL"]


@dataclass(frozen=True)
class CropChunk:
    """Some whole images to crop: (image file or http(s) URL, Rotation, box records, info) each.

    out_dir: where per-crop JPEGs go for browsing ("" for none); shard_dir: where the chunk's
    shard goes ("": returned in the report)."""

    name: str
    out_dir: str
    options: CropOptions
    images: list[tuple] = field(default_factory=list)
    shard_dir: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> CropChunk:
        return cls(data["name"], data["out_dir"], CropOptions(**data["options"]),
                   [(path, rotation, [tuple(r) for r in records], *rest)
                    for path, rotation, records, *rest in data["images"]],
                   data.get("shard_dir", ""))

    def box_ids(self) -> list[str]:
        return [record[0] for _, _, records, *_ in self.images for record in records]


CropRunner = Callable[[list[CropChunk]], list[dict]]


def run_chunk(chunk: CropChunk) -> dict:
    """Crop every image of a chunk into one shard; return its report with one outcome row per
    box (and the shard's bytes when the chunk has no shard folder)."""
    rows, kept, images = [], [], []
    for path, rotation, records, *rest in chunk.images:
        info, boxes = rest[0] if rest else {}, {r[0]: r for r in records}
        try:
            image = _source(path)
        except Exception as error:  # noqa: BLE001 - a photo the source lacks: its boxes fail
            rows += [{"BoxID": r[0], "Status": "failed", "Error": str(error)} for r in records]
            continue
        for row in crop_image(image, rotation, records, chunk.out_dir or None,
                              chunk.options, keep_bytes=True):
            if row["Status"] == "ok":
                box = boxes[row["BoxID"]]
                kept.append({**info, **row, "ImageID": box[1], "Class": box[2],
                             "XMin": box[3], "XMax": box[4], "YMin": box[5], "YMax": box[6]})
                images.append(row.pop("Image"))
            rows.append(row)
    report: dict = {"chunk": chunk.name, "images": len(chunk.images), "rows": rows}
    if kept:
        data = shard_bytes(kept, images)
        name = (write_shard(Path(chunk.shard_dir), data) if chunk.shard_dir
                else shard_name(data))
        for number, row in enumerate(r for r in rows if r["Status"] == "ok"):
            row.update(Shard=name, Row=number)
        if not chunk.shard_dir:
            report["shard"] = data
    return report


def _source(path: str) -> Path | BinaryIO:
    """An image to crop: a local file, or the image source's object read into memory."""
    if not path.startswith(("http://", "https://")):
        return Path(path)
    response = _http().request("GET", path, retries=3, timeout=60.0)
    if response.status != 200:
        raise OSError(f"{path}: HTTP {response.status}")
    return io.BytesIO(response.data)


@cache
def _http() -> object:
    """This process's HTTP connection pools."""
    import urllib3

    return urllib3.PoolManager(maxsize=8)


def source_manifest(boxes: pd.DataFrame, base_url: str) -> pd.DataFrame:
    """A downloads manifest whose every photo is read from the image source itself
    (base_url: the bucket's URL prefix, photos at <Subset>/<ImageID>.jpg), for cropping on
    workers that share no disk with the flow. A photo the source lacks fails its boxes."""
    images = boxes.drop_duplicates("ImageID")
    sizes = pd.to_numeric(images.get("OriginalSize", 0), errors="coerce").fillna(0)
    return pd.DataFrame({"ImageID": images.ImageID, "Status": "ok",
                         "Path": [f"{base_url}{subset}/{image_id}.jpg" for subset, image_id
                                  in zip(images.Subset, images.ImageID, strict=True)],
                         "Bytes": sizes.astype("int64")}).reset_index(drop=True)


def process_pool(workers: int | None = None) -> CropRunner:
    """A runner on a local process pool with a progress bar (the default outside Prefect)."""

    def run(chunks: list[CropChunk]) -> list[dict]:
        reports = []
        # spawn, not fork: the caller may already hold TensorFlow or Prefect threads.
        with ProcessPoolExecutor(workers or os.cpu_count(), mp_context=get_context("spawn")) \
                as pool, tqdm(total=sum(len(c.images) for c in chunks), desc="crop",
                              unit="img") as bar:
            for chunk, report in zip(chunks, pool.map(run_chunk, chunks), strict=True):
                reports.append(report)
                bar.update(len(chunk.images))
        return reports

    return run


def crop_key(options: CropOptions, image_bytes: int) -> str:
    """What a crop depends on besides its box: the cropping, its options and the source file."""
    return hashlib.sha1(f"{CROP_FORMAT}|{options}|{image_bytes}".encode()).hexdigest()[:12]


def plan(boxes: pd.DataFrame, ok: pd.DataFrame, out_dir: Path | None, options: CropOptions,
         chunk_images: int, shard_dir: Path | None = None) -> list[CropChunk]:
    """Chunks of whole images for the boxes to crop (ok: downloaded images by ImageID, their
    Path a file or an s3:// URL); out_dir None: no per-crop files; shard_dir None: shards
    come back in the reports."""
    paths = ok.Path.to_dict()
    first = boxes.drop_duplicates("ImageID").set_index("ImageID")
    info = {column: first[column].to_dict() for column in IMAGE_INFO if column in first}
    work = [(str(paths[image_id]), _rotation(first.Rotation[image_id]), records,
             {column: _plain(values[image_id]) for column, values in info.items()})
            for image_id, records in sorted(records_by_image(boxes).items())]
    size = max(1, chunk_images)
    return [CropChunk(f"crop-{n // size:05d}", str(out_dir or ""), options, work[n:n + size],
                      str(shard_dir or "")) for n in range(0, len(work), size)]


def _plain(value: object) -> object:
    """A value JSON can carry: a missing one becomes None."""
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def _rotation(value: object) -> float | None:
    """Rotation as JSON can carry it: a missing one (NaN) becomes None."""
    return None if value is None or pd.isna(value) else float(value)


def crop_boxes(boxes: pd.DataFrame, manifest: pd.DataFrame, shard_dir: Path,
               options: CropOptions, previous: pd.DataFrame | None = None,
               run_chunks: CropRunner | None = None, chunk_images: int = 500,
               out_dir: Path | None = None) -> pd.DataFrame:
    """Crop all boxes whose image downloaded into shards under shard_dir (and with out_dir,
    per-crop JPEGs there too); return the crops table (one row per box).

    Rows of a previous table whose shard exists and whose options, source image and split
    are unchanged are kept as they are: a rerun crops only what is missing or changed.
    Chunks that return their shard (workers without the flow's disk) have it written here.
    """
    ok = manifest[manifest.Status == "ok"].set_index("ImageID")
    boxes = boxes[boxes.ImageID.isin(ok.index)].copy()
    if "Rotation" not in boxes:
        boxes["Rotation"] = None
    sizes = ok.Bytes if "Bytes" in ok else pd.Series(0, index=ok.index)
    boxes["CropKey"] = [crop_key(options, int(sizes[i])) for i in boxes.ImageID]
    kept = _reusable(boxes, previous, shard_dir)
    chunks = plan(boxes[~boxes.BoxID.isin(kept.BoxID)], ok, out_dir, options, chunk_images,
                  shard_dir)
    outcomes: list[dict] = kept.to_dict("records")
    if chunks:
        for report in (run_chunks or process_pool())(chunks):
            if report.get("shard") is not None:
                write_shard(shard_dir, report["shard"])
            outcomes.extend(report["rows"])
    table = boxes.merge(pd.DataFrame(outcomes, columns=OUTCOME_COLUMNS), on="BoxID")
    return table.reset_index(drop=True)


def _reusable(boxes: pd.DataFrame, previous: pd.DataFrame | None,
              shard_dir: Path) -> pd.DataFrame:
    """Outcome rows of the previous table that still hold for these boxes."""
    if previous is None or "Shard" not in previous or previous.empty:
        return pd.DataFrame(columns=OUTCOME_COLUMNS)
    # The saved table holds usable crops only, without the outcome columns.
    keys = ["BoxID", "CropKey", *(["Split"] if "Split" in boxes else [])]
    same = previous.merge(boxes[keys], on=keys).assign(Status="ok", Error="")
    there = {s for s in same.Shard.dropna().unique() if (shard_dir / s).exists()}
    return same[same.Shard.isin(there)][OUTCOME_COLUMNS].reset_index(drop=True)
