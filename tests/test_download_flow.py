"""The download fanned out as Prefect chunk tasks: on threads, and on a loopback Dask cluster."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from flows.download_flow import CHUNKS, chunk_runner
from flows.openimages import manifest as mf
from flows.openimages.download import download_images
from flows.pipeline.stages import download_options
from flows.settings import Settings
from tests.downloadkit import catalog, image_id, image_table, jpeg
from tests.imageserver import Faults, ImageServer

pytestmark = pytest.mark.integration


def run(settings: Settings, count: int) -> tuple[list[dict], object]:
    """Download count images through the flow; return the chunk reports and the manifest."""
    images = {image_id(n): jpeg(n) for n in range(1, count + 1)}
    reports: list[dict] = []
    runner = chunk_runner(settings)

    def recording(chunks, options):
        reports.extend(runner(chunks, options))
        return reports

    with ImageServer(catalog(images), Faults(latency=0.05)) as server:
        settings = settings.model_copy(update={"image_endpoint_url": server.url})
        options = replace(download_options(settings), progress=False)
        result = download_images(image_table(server.url, images), settings.image_dir, options,
                                 run_chunks=recording)
    assert len(result) == count and (result.Status == "ok").all()
    store = settings.image_dir
    assert not list((store / mf.JOURNALS).iterdir()) and not list((store / CHUNKS).iterdir())
    assert mf.read_manifest(store).ImageID.tolist() == sorted(images)
    assert sum(r["images"] for r in reports) == count
    return reports, result


def test_chunks_run_as_tasks_on_threads(harness, tmp_path):
    settings = Settings(workspace=tmp_path, download_chunk_images=10,
                        download_parallel_chunks=2)
    reports, _ = run(settings, 40)
    assert len(reports) == 4 and {r["pid"] for r in reports} == {os.getpid()}


def test_chunks_run_in_dask_worker_processes(harness, tmp_path):
    settings = Settings(workspace=tmp_path, download_chunk_images=8, download_workers=4,
                        task_runner="dask", dask_workers=2)
    reports, _ = run(settings, 48)
    pids = {r["pid"] for r in reports}
    assert len(reports) == 6 and os.getpid() not in pids and len(pids) == 2
    assert all(r["dask_worker"].startswith("tcp://127.0.0.1:") for r in reports)
