"""Cropping fanned out as Prefect chunk tasks: on threads, on a loopback Dask cluster, and a
chunk that fails is recorded, not fatal."""

import os

import pytest

from flows.crop_flow import chunk_runner
from flows.openimages.crop import CropOptions
from flows.openimages.cropjobs import CropChunk, crop_boxes
from flows.run.fanout import CHUNKS
from flows.settings import Settings
from tests.test_cropjobs import manifest, selection

pytestmark = pytest.mark.integration


def crop(settings, tmp_path, count, runner=None):
    ids = [f"{n:04d}" for n in range(count)]
    reports = []
    run = runner or chunk_runner(settings)

    def recording(chunks):
        reports.extend(run(chunks))
        return reports

    out = settings.dataset_dir / "shards"
    table = crop_boxes(selection(ids), manifest(tmp_path, ids), out, CropOptions(size=32),
                       run_chunks=recording, chunk_images=settings.crop_chunk_images)
    assert not (settings.dataset_dir / CHUNKS).exists()  # chunks travel as data, not files
    ok = table[table.Status == "ok"]
    assert set(ok.Shard) == {p.name for p in out.iterdir()}  # the flow wrote what came back
    return table, reports


def test_chunks_run_as_tasks_on_threads(harness, tmp_path):
    settings = Settings(workspace=tmp_path, crop_chunk_images=3, crop_workers=2)
    table, reports = crop(settings, tmp_path, 9)
    assert (table.Status == "ok").all() and len(table) == 18
    assert len(reports) == 3 and {r["pid"] for r in reports} == {os.getpid()}


def test_chunks_run_in_dask_worker_processes(harness, tmp_path):
    settings = Settings(workspace=tmp_path, crop_chunk_images=2, task_runner="dask",
                        dask_workers=2)
    table, reports = crop(settings, tmp_path, 8)
    assert (table.Status == "ok").all() and len(table) == 16
    pids = {r["pid"] for r in reports}
    assert len(reports) == 4 and os.getpid() not in pids and len(pids) == 2
    assert len({r["dask_worker"] for r in reports}) == 2


def test_a_failed_chunk_marks_its_boxes_failed_and_the_rest_is_kept(harness, tmp_path,
                                                                   monkeypatch):
    import flows.crop_flow

    real = flows.crop_flow.run_chunk

    def flaky(chunk: CropChunk) -> dict:
        if chunk.name.endswith("00001"):
            raise OSError("disk full")
        return real(chunk)

    monkeypatch.setattr(flows.crop_flow, "run_chunk", flaky)
    settings = Settings(workspace=tmp_path, crop_chunk_images=2, crop_workers=2)
    table, _ = crop(settings, tmp_path, 6)
    failed = table[table.Status == "failed"]
    assert len(failed) == 4 and failed.Error.str.contains("disk full").all()
    assert (table.Status == "ok").sum() == 8


def test_one_local_cluster_serves_every_stage_of_a_run(harness, tmp_path):
    from flows.run.fanout import shared_cluster

    with shared_cluster(Settings(workspace=tmp_path)) as unchanged:
        assert unchanged.dask_address is None  # threads: no cluster at all
    settings = Settings(workspace=tmp_path, crop_chunk_images=2, task_runner="dask",
                        dask_workers=2)
    with shared_cluster(settings) as shared:
        assert shared.dask_address.startswith("tcp://127.0.0.1:")
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        _, first = crop(shared, tmp_path / "a", 6)
        _, second = crop(shared, tmp_path / "b", 6)
    # Separate clusters would have started new workers on new ports for the second stage.
    workers = {r["dask_worker"] for r in first + second}
    assert 1 <= len(workers) <= 2
