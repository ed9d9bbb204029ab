"""Fanning chunk work out as Prefect tasks, on threads or on a Dask cluster.

A download chunk travels as a small JSON file beside its data (flow and task parameters stay
small), runs wherever the task runner puts it, and returns a report naming the host and
process that ran it; those files must be on a file system every worker sees. Crop chunks
travel as task data instead and need no shared disk (flows/crop_flow.py).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from flows.settings import Settings
from model.atomic import write_text

CHUNKS = ".chunks"


def task_runner(settings: Settings, threads: int) -> object:
    """Threads by default; Dask (an existing scheduler or a loopback LocalCluster) on demand."""
    if settings.dask_address or settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs=local_cluster(settings))
    return ThreadPoolTaskRunner(max_workers=max(1, threads))


def local_cluster(settings: Settings) -> dict:
    """The LocalCluster of the Dask runner: worker processes on loopback, no dashboard."""
    return {"n_workers": settings.dask_workers, "threads_per_worker": 1, "processes": True,
            "host": "127.0.0.1", "dashboard_address": None}


@contextmanager
def shared_cluster(settings: Settings) -> Iterator[Settings]:
    """For a flow with several fanned-out stages on Dask and no scheduler given: one
    LocalCluster for the whole run, its workers started once, not once per stage. Yields the
    settings to run with."""
    if settings.dask_address or settings.task_runner != "dask":
        yield settings
        return
    from distributed import LocalCluster

    with LocalCluster(**local_cluster(settings)) as cluster:
        yield settings.model_copy(update={"dask_address": cluster.scheduler_address})


def on_threads(runner: object) -> bool:
    """Whether the chunks share the flow's process (and so its limits)."""
    return isinstance(runner, ThreadPoolTaskRunner)


@contextmanager
def chunk_files(folder: Path, chunks: list[tuple[str, dict]]) -> Iterator[list[str]]:
    """Write each (name, JSON data) chunk to folder/name.json; remove them afterwards."""
    paths = []
    for name, data in chunks:
        path = folder / f"{name}.json"
        write_text(path, json.dumps(data, default=str))
        paths.append(str(path))
    try:
        yield paths
    finally:
        for path in paths:
            Path(path).unlink(missing_ok=True)


def read_chunk(path: str) -> dict:
    """The JSON data of one chunk file."""
    return json.loads(Path(path).read_text())


def where() -> dict:
    """Which process ran a chunk: host, pid and, on a Dask worker, its address."""
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):  # not inside a Dask worker
        worker = None
    return {"host": socket.gethostname(), "pid": os.getpid(), "dask_worker": worker}


def ran_on(reports: list[dict]) -> str:
    """Where the chunks ran, in words for the run's log."""
    workers = sorted({r["dask_worker"] for r in reports if r.get("dask_worker")})
    if workers:
        return f"on {len(workers)} Dask worker(s) ({', '.join(workers)})"
    return f"in {len({(r.get('host'), r.get('pid')) for r in reports if 'pid' in r})} process(es)"


def collect(paths: list[str], futures: list[PrefectFuture]) -> list[dict]:
    """Every chunk's report; a chunk that failed is reported with its error, not raised, so
    the others' work is kept (its items are retried by the next run)."""
    reports = []
    for path, future in zip(paths, futures, strict=True):
        try:
            reports.append(future.result())
        except Exception as error:  # noqa: BLE001 - reported; the other chunks go on
            reports.append({"chunk": Path(path).stem, "error": f"{type(error).__name__}: {error}"})
    return reports
