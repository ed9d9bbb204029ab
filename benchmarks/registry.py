"""Embedded registry start time after 1, 10 and 50 publishes: full request replay vs snapshot.

One registry server takes the publishes (a tiny quilt3 package: 5 crops and a model that
changes every time, pushed after a look at the newest version, as the pipeline does). It
keeps its state the new way (snapshot plus journal of changes) and, through moto's recorder,
the old way too (every request, reads included). After 1, 10 and 50 publishes both states
are copied and a fresh server is started on each copy; the old one replays the log over HTTP
as LocalS3 used to. The time counts from process start until the registry answers with its
state loaded; the start of an empty registry is the floor both share.

    python benchmarks/registry.py            # 1, 10, 50 publishes
    python benchmarks/registry.py --quick    # 1, 3, 5, for the test suite
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.publishing.registries import EMBEDDED_BUCKET  # noqa: E402
from flows.servers.local import (  # noqa: E402
    LOCAL_CREDENTIALS,
    TELEMETRY_OFF,
    LocalS3,
    free_port,
    wait_http,
)

NAME, REGISTRY = "bench/registry", f"s3://{EMBEDDED_BUCKET}"


def make_files(root: Path) -> Path:
    """Five small crops and a model file, in a folder."""
    (root / "crops").mkdir(parents=True)
    for i in range(5):
        (root / "crops" / f"{i}.jpg").write_bytes(os.urandom(2_000))
    return root


def publish_once(root: Path, run: int) -> str:
    """Push a new model beside the same crops; return the top hash."""
    from flows.publishing.s3clients import quilt3_module

    quilt3 = quilt3_module()  # as the pipeline loads it: its clients' CPU is not measured here
    (root / "model.keras").write_bytes(os.urandom(20_000))
    if run > 1:
        quilt3.Package.browse(NAME, registry=REGISTRY)  # the pipeline's unchanged-bundle check
    package = quilt3.Package().set_dir("/", str(root)).set_meta({"run": run})
    return package.push(NAME, registry=REGISTRY, message=f"run {run}", force=True).top_hash


def start_old(log: Path) -> float:
    """Seconds for the old way to come back: a recording server, then a replay of the log."""
    port, begin = free_port(), time.perf_counter()
    env = {**os.environ, **TELEMETRY_OFF, "MOTO_ENABLE_RECORDING": "true",
           "MOTO_RECORDER_FILEPATH": str(log)}
    process = subprocess.Popen([sys.executable, "-m", "flows.servers.s3server", "-p", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                               cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", 60, process)
        requests.post(f"http://127.0.0.1:{port}/moto-api/recorder/replay-recording",
                      timeout=1800).raise_for_status()
        return time.perf_counter() - begin
    finally:
        process.terminate()
        process.wait()


def start_new(state: Path) -> float:
    """Seconds for the new way: the server loads snapshot and journal before it answers."""
    begin = time.perf_counter()
    with LocalS3(state_dir=state):
        return time.perf_counter() - begin


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() \
        else path.stat().st_size


def main() -> None:
    """Publish, and at each checkpoint time both kinds of start; one line per checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    checkpoints = (1, 3, 5) if args.quick else (1, 10, 50)
    os.environ.update(TELEMETRY_OFF, **LOCAL_CREDENTIALS)
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        tmp = Path(tmp)
        files = make_files(tmp / "package")
        empty = start_new(tmp / "empty")
        print(f"registry start, empty: {empty:5.2f} s", flush=True)
        log, state = tmp / "requests.jsonl", tmp / "registry"
        recording = {"MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(log)}
        with LocalS3(state_dir=state, env=recording) as s3:
            s3.create_bucket(EMBEDDED_BUCKET)
            os.environ["AWS_ENDPOINT_URL"] = s3.endpoint_url
            for done in range(1, checkpoints[-1] + 1):
                publish_once(files, done)
                if done not in checkpoints:
                    continue
                copy = tmp / f"after-{done}"
                shutil.copytree(state / "s3", copy / "s3")  # the server is idle between pushes
                shutil.copy(log, copy / "requests.jsonl")
                lines = len(log.read_bytes().splitlines())
                new = start_new(copy)
                old = start_old(copy / "requests.jsonl")
                print(f"registry start after {done:2d} publishes: old {old:6.2f} s "
                      f"({lines} requests, {size(log) / 1e6:.2f} MB)  new {new:5.2f} s "
                      f"({size(copy / 's3') / 1e6:.2f} MB)  old/new {old / new:5.1f}x",
                      flush=True)


if __name__ == "__main__":
    main()
