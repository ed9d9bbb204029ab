"""Prefect side of the image download: chunks fanned out as tasks, on threads or on Dask.

Each chunk writes its results to its own journal, so chunks in different processes or on
different Dask workers never share a file. The store must be on a file system every worker
sees.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from flows.openimages.download import Chunk, ChunkRunner, DownloadOptions
from flows.openimages.downloader import run_chunks
from flows.run.fanout import (
    CHUNKS,
    chunk_files,
    collect,
    on_threads,
    ran_on,
    read_chunk,
    task_runner,
    where,
)
from flows.settings import Settings

__all__ = ["CHUNKS", "chunk_runner", "download_chunks"]


@task(retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def download_chunk(path: str, options: DownloadOptions) -> dict:
    """Download the images of one chunk file."""
    return {**run_chunks([Chunk(**read_chunk(path))], options)[0], **where()}


@flow(name="download-images", log_prints=True)
def download_chunks(paths: list[str], options: DownloadOptions) -> list[dict]:
    """Run every chunk as a task; a chunk that fails is reported, not raised (its images are
    recorded as failed and retried by the next run)."""
    reports = collect(paths, download_chunk.map(paths, options=unmapped(options)))
    done = [r for r in reports if "error" not in r]
    print(f"download: {len(done)} of {len(paths)} chunks done, "
          f"{sum(r['images'] for r in done)} images handled {ran_on(done)}")
    return reports


def chunk_runner(settings: Settings) -> ChunkRunner:
    """A ChunkRunner that runs the chunks through the download-images flow."""

    def run(chunks: list[Chunk], options: DownloadOptions) -> list[dict]:
        runner = task_runner(settings, settings.download_parallel_chunks)
        if on_threads(runner):  # chunks share this process: split its limits
            parallel = max(1, settings.download_parallel_chunks)
            options = replace(options, workers=max(1, options.workers // parallel),
                              per_host=max(1, options.per_host // parallel))
        folder = Path(chunks[0].store) / CHUNKS
        with chunk_files(folder, [(c.name, asdict(c)) for c in chunks]) as paths:
            return download_chunks.with_options(task_runner=runner)(paths, options)

    return run
