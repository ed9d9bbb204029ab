"""Prefect side of cropping: chunks of whole images fanned out as tasks, on threads or Dask.

Pillow decodes, resizes and encodes without holding the GIL, so chunks on threads use every
core too; on Dask they run in the workers' processes. Crops land in the dataset folder, which
must be on a file system every worker sees.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.openimages.cropjobs import CropChunk, CropRunner, run_chunk
from flows.run.fanout import CHUNKS, chunk_files, collect, ran_on, read_chunk, task_runner, where
from flows.settings import Settings


@task(cache_policy=NO_CACHE)
def crop_chunk(path: str) -> dict:
    """Crop the images of one chunk file."""
    return {**run_chunk(CropChunk.from_json(read_chunk(path))), **where()}


@flow(name="crop-images", log_prints=True)
def crop_chunks(paths: list[str]) -> list[dict]:
    """Run every chunk as a task; the boxes of a chunk that fails are recorded as failed (and
    cropped again by the next run), the other chunks' crops are kept."""
    reports = collect(paths, crop_chunk.map(paths))
    done = [r for r in reports if "error" not in r]
    print(f"crop: {len(done)} of {len(paths)} chunks done, "
          f"{sum(r['images'] for r in done)} images cropped {ran_on(done)}")
    return reports


def chunk_runner(settings: Settings) -> CropRunner:
    """A CropRunner that runs the chunks through the crop-images flow."""

    def run(chunks: list[CropChunk]) -> list[dict]:
        runner = task_runner(settings, settings.crop_workers or os.cpu_count() or 1)
        folder = Path(chunks[0].out_dir).parent / CHUNKS
        with chunk_files(folder, [(c.name, c.to_json()) for c in chunks]) as paths:
            reports = crop_chunks.with_options(task_runner=runner)(paths)
        by_name = {c.name: c for c in chunks}
        return [failed(by_name[r["chunk"]], r["error"]) if "error" in r else r
                for r in reports]

    return run


def failed(chunk: CropChunk, error: str) -> dict:
    """The report of a chunk that did not run: every box failed with the chunk's error."""
    rows = [{"BoxID": box_id, "Status": "failed", "Error": error} for box_id in chunk.box_ids()]
    return {"chunk": chunk.name, "images": len(chunk.images), "rows": rows, "error": error}
