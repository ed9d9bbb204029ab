"""Prefect side of the image download: chunks fanned out as tasks, on threads or on Dask.

Each chunk travels as a small JSON file beside the store (flow and task parameters stay
small), runs wherever the task runner puts it, and writes its results to its own journal, so
chunks in different processes or on different Dask workers never share a file. The store must
be on a file system every worker sees.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.atomic import write_text
from flows.openimages.download import Chunk, ChunkRunner, DownloadOptions
from flows.openimages.downloader import run_chunks
from flows.settings import Settings

CHUNKS = ".chunks"


@task(retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def download_chunk(path: str, options: DownloadOptions) -> dict:
    """Download the images of one chunk file."""
    return run_chunks([Chunk(**json.loads(Path(path).read_text()))], options)[0]


@flow(name="download-images", log_prints=True)
def download_chunks(paths: list[str], options: DownloadOptions) -> list[dict]:
    """Run every chunk as a task; a chunk that fails is reported, not raised (its images are
    recorded as failed and retried by the next run)."""
    futures = download_chunk.map(paths, options=unmapped(options))
    reports = []
    for path, future in zip(paths, futures, strict=True):
        try:
            reports.append(future.result())
        except Exception as error:  # noqa: BLE001 - reported in the manifest; others go on
            reports.append({"chunk": Path(path).stem, "error": f"{type(error).__name__}: {error}"})
    done = [r for r in reports if "error" not in r]
    print(f"download: {len(done)} of {len(paths)} chunks done, "
          f"{sum(r['images'] for r in done)} images handled")
    return reports


def task_runner(settings: Settings) -> object:
    """Threads by default; Dask (an existing scheduler or a loopback LocalCluster) on demand."""
    if settings.dask_address or settings.download_task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
            "n_workers": settings.dask_workers, "threads_per_worker": 1, "processes": True,
            "host": "127.0.0.1", "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=settings.download_parallel_chunks)


def chunk_runner(settings: Settings) -> ChunkRunner:
    """A ChunkRunner that runs the chunks through the download-images flow."""

    def run(chunks: list[Chunk], options: DownloadOptions) -> list[dict]:
        runner = task_runner(settings)
        if isinstance(runner, ThreadPoolTaskRunner):  # chunks share this process: split limits
            parallel = max(1, settings.download_parallel_chunks)
            options = replace(options, workers=max(1, options.workers // parallel),
                              per_host=max(1, options.per_host // parallel))
        folder = Path(chunks[0].store) / CHUNKS
        paths = []
        for chunk in chunks:
            path = folder / f"{chunk.name}.json"
            write_text(path, json.dumps(asdict(chunk), default=str))
            paths.append(str(path))
        try:
            return download_chunks.with_options(task_runner=runner)(paths, options)
        finally:
            for path in paths:
                Path(path).unlink(missing_ok=True)

    return run
