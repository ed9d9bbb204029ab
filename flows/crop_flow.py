"""Prefect side of cropping: chunks of whole images fanned out as tasks, on threads or Dask.

Pillow decodes, resizes and encodes without holding the GIL, so chunks on threads use every
core too; on Dask they run in the workers' processes. Nothing goes through a shared disk: a
chunk travels as task data (JSON-ready), its worker reads the photos it names (files of the
image store, or s3:// objects of the image source with OPENIMAGER_CROP_FROM_SOURCE) and
returns its crops as one Parquet shard in its report, which the flow writes into the dataset.
"""

from __future__ import annotations

import os
from dataclasses import replace

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.openimages.cropjobs import CropChunk, CropRunner, run_chunk
from flows.run.fanout import collect, ran_on, task_runner, where
from flows.settings import Settings


@task(cache_policy=NO_CACHE)
def crop_chunk(chunk: dict) -> dict:
    """Crop the images of one chunk; its shard comes back in the report."""
    return {**run_chunk(CropChunk.from_json(chunk)), **where()}


# The chunks of the runs in this process, by name: the subflow's parameters (which the Prefect
# API stores) stay a list of names, while the tasks get the data itself.
_PENDING: dict[str, dict] = {}


@flow(name="crop-images", log_prints=True)
def crop_chunks(names: list[str]) -> list[dict]:
    """Run every chunk as a task; the boxes of a chunk that fails are recorded as failed (and
    cropped again by the next run), the other chunks' crops are kept."""
    reports = collect(names, crop_chunk.map([_PENDING[name] for name in names]))
    done = [r for r in reports if "error" not in r]
    print(f"crop: {len(done)} of {len(names)} chunks done, "
          f"{sum(r['images'] for r in done)} images cropped {ran_on(done)}")
    return reports


def chunk_runner(settings: Settings) -> CropRunner:
    """A CropRunner that runs the chunks through the crop-images flow; workers return their
    shards (no shard folder travels with a chunk)."""

    def run(chunks: list[CropChunk]) -> list[dict]:
        runner = task_runner(settings, settings.crop_workers or os.cpu_count() or 1)
        names = [c.name for c in chunks]
        _PENDING.update({c.name: replace(c, shard_dir="").to_json() for c in chunks})
        try:
            reports = crop_chunks.with_options(task_runner=runner)(names)
        finally:
            for name in names:
                _PENDING.pop(name, None)
        by_name = {c.name: c for c in chunks}
        return [failed(by_name[r["chunk"]], r["error"]) if "error" in r else r
                for r in reports]

    return run


def failed(chunk: CropChunk, error: str) -> dict:
    """The report of a chunk that did not run: every box failed with the chunk's error."""
    rows = [{"BoxID": box_id, "Status": "failed", "Error": error} for box_id in chunk.box_ids()]
    return {"chunk": chunk.name, "images": len(chunk.images), "rows": rows, "error": error}
