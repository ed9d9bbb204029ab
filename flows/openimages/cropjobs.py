"""Cropping a whole selection: plan the work in chunks, run them anywhere, reuse earlier crops.

`crop_boxes` keeps the previous run's crops that still hold, cuts the rest into chunks of
whole images, runs them (on a local process pool, or as Prefect tasks on threads or Dask
through `run_chunks`), and joins the outcomes to the boxes. A chunk is plain data (JSON-ready),
so it can travel to another process or machine; its crops land in a folder every worker sees.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from flows.openimages.crop import (
    CROP_FORMAT,
    BoxRecord,
    CropOptions,
    crop_image,
    records_by_image,
)

OUTCOME_COLUMNS = ["BoxID", "Status", "Error", "CropPath", "Width", "Height"]


@dataclass(frozen=True)
class CropChunk:
    """Some whole images to crop: (image path, Rotation, box records) each."""

    name: str
    out_dir: str
    options: CropOptions
    images: list[tuple[str, float | None, list[BoxRecord]]] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> CropChunk:
        return cls(data["name"], data["out_dir"], CropOptions(**data["options"]),
                   [(path, rotation, [tuple(r) for r in records])
                    for path, rotation, records in data["images"]])

    def box_ids(self) -> list[str]:
        return [record[0] for _, _, records in self.images for record in records]


CropRunner = Callable[[list[CropChunk]], list[dict]]


def run_chunk(chunk: CropChunk) -> dict:
    """Crop every image of a chunk; return its report with one outcome row per box."""
    out_dir = Path(chunk.out_dir)
    rows = [row for path, rotation, records in chunk.images
            for row in crop_image(Path(path), rotation, records, out_dir, chunk.options)]
    return {"chunk": chunk.name, "images": len(chunk.images), "rows": rows}


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


def plan(boxes: pd.DataFrame, ok: pd.DataFrame, out_dir: Path, options: CropOptions,
         chunk_images: int) -> list[CropChunk]:
    """Chunks of whole images for the boxes to crop (ok: downloaded images by ImageID)."""
    paths = ok.Path.to_dict()
    rotations = dict(zip(boxes.ImageID.tolist(), boxes.Rotation.tolist(), strict=True))
    work = [(str(paths[image_id]), _rotation(rotations[image_id]), records)
            for image_id, records in sorted(records_by_image(boxes).items())]
    size = max(1, chunk_images)
    return [CropChunk(f"crop-{n // size:05d}", str(out_dir), options, work[n:n + size])
            for n in range(0, len(work), size)]


def _rotation(value: object) -> float | None:
    """Rotation as JSON can carry it: a missing one (NaN) becomes None."""
    return None if value is None or pd.isna(value) else float(value)


def crop_boxes(boxes: pd.DataFrame, manifest: pd.DataFrame, out_dir: Path,
               options: CropOptions, previous: pd.DataFrame | None = None,
               run_chunks: CropRunner | None = None, chunk_images: int = 500) -> pd.DataFrame:
    """Crop all boxes whose image downloaded; return the crops table (one row per box).

    Rows of a previous table whose crop file exists and whose options and source image are
    unchanged are kept as they are: a rerun crops only what is missing or changed.
    """
    ok = manifest[manifest.Status == "ok"].set_index("ImageID")
    boxes = boxes[boxes.ImageID.isin(ok.index)].copy()
    if "Rotation" not in boxes:
        boxes["Rotation"] = None
    sizes = ok.Bytes if "Bytes" in ok else pd.Series(0, index=ok.index)
    boxes["CropKey"] = [crop_key(options, int(sizes[i])) for i in boxes.ImageID]
    kept = _reusable(boxes, previous, out_dir)
    chunks = plan(boxes[~boxes.BoxID.isin(kept.BoxID)], ok, out_dir, options, chunk_images)
    outcomes: list[dict] = kept.to_dict("records")
    if chunks:
        for report in (run_chunks or process_pool())(chunks):
            outcomes.extend(report["rows"])
    table = boxes.merge(pd.DataFrame(outcomes, columns=OUTCOME_COLUMNS), on="BoxID")
    return table.reset_index(drop=True)


def _reusable(boxes: pd.DataFrame, previous: pd.DataFrame | None, out_dir: Path) -> pd.DataFrame:
    """Outcome rows of the previous table that still hold for these boxes."""
    if previous is None or "CropKey" not in previous or previous.empty:
        return pd.DataFrame(columns=OUTCOME_COLUMNS)
    # The saved table holds usable crops only, without the outcome columns.
    same = previous.merge(boxes[["BoxID", "CropKey"]], on=["BoxID", "CropKey"]).assign(
        Status="ok", Error="")
    exists = same.CropPath.map(lambda p: isinstance(p, str) and (out_dir / p).exists()).astype(bool)
    return same[exists][OUTCOME_COLUMNS].reset_index(drop=True)
