"""The servers of benchmarks/serve.py, each on 127.0.0.1 in a process group of its own, and
what the benchmark reads of them: the CPU of their process trees, their workers' memory and
openimager's batch sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["Hamburger", "Sandwich"]


def service_threads(workers: int) -> int:
    """The TensorFlow threads each of the service's workers gets with this many workers."""
    from service.config import Tuning

    previous = os.environ.get("OPENIMAGER_WORKERS")
    os.environ["OPENIMAGER_WORKERS"] = str(workers)
    try:
        return Tuning.from_env().intra_op_threads
    finally:
        if previous is None:
            del os.environ["OPENIMAGER_WORKERS"]
        else:
            os.environ["OPENIMAGER_WORKERS"] = previous


def own_home(folder: Path) -> Path:
    """A BENTOML_HOME that shares the current one's models but not its metrics: `bentoml
    serve` empties its home's prometheus_multiproc_dir at start, so two servers running from
    one home read each other's (or no) batch sizes."""
    home = Path(os.environ["BENTOML_HOME"])
    folder.mkdir(parents=True, exist_ok=True)
    for entry in home.iterdir():
        if entry.name != "prometheus_multiproc_dir" and not (folder / entry.name).exists():
            (folder / entry.name).symlink_to(entry)
    return folder


@contextmanager
def openimager_server(tag: str, workers: int, log: Path, logging: bool = True
                      ) -> Iterator[tuple[str, int]]:
    """openimager's service, logging predictions beside its log or not, with a BentoML home of
    its own; yields its base URL and process id."""
    from flows.servers.local import BentoServer

    env = {"OPENIMAGER_WORKERS": str(workers), "OPENIMAGER_PREDICTION_LOG": str(logging),
           "OPENIMAGER_PREDICTION_LOG_DIR": str(log.with_suffix(".predictions")),
           "BENTOML_HOME": str(own_home(log.with_suffix(".home")))}
    with BentoServer(tag, log_path=log, env=env) as server:
        yield server.url, server.process.pid


@contextmanager
def spawned_server(args: list[str], env: dict[str, str], log: Path, ready: str,
                   timeout: float) -> Iterator[tuple[str, int]]:
    """A server run as `args --host 127.0.0.1 --port PORT` from the project's folder, ending
    with this process; yields its base URL (once ready answers) and process id."""
    from flows.servers import lifeline
    from flows.servers.local import TELEMETRY_OFF, free_port, stop_group, wait_ready

    port = free_port()
    with log.open("ab") as out:
        process = lifeline.popen(
            [sys.executable, "-m", *args, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env={**os.environ, **TELEMETRY_OFF, **env}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}{ready}", timeout, process)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        stop_group(process)


@contextmanager
def naive_server(model_file: Path, workers: int, log: Path) -> Iterator[tuple[str, int]]:
    """The tutorial FastAPI app under uvicorn; yields its base URL and process id."""
    env = {"NAIVE_MODEL": str(model_file), "NAIVE_CLASSES": json.dumps(CLASSES)}
    with spawned_server(["uvicorn", "benchmarks.naive_server:app", "--workers", str(workers),
                         "--no-access-log"], env, log, "/docs", 180) as server:
        yield server


def role(command: str) -> str | None:
    """What a process of a server's tree does: worker (BentoML's or uvicorn's), or None for
    supervisors."""
    return "worker" if "_bentoml_impl.worker" in command or "spawn_main" in command else None


def worker_memory(pid: int) -> str:
    """Resident memory of each worker process under pid, by role."""
    import psutil

    roles: dict[str, list[float]] = {}
    for child in psutil.Process(pid).children(recursive=True):
        if name := role(" ".join(child.cmdline())):
            roles.setdefault(name, []).append(child.memory_info().rss / 2**20)
    if not roles:  # a single uvicorn worker runs in the main process
        roles["worker"] = [psutil.Process(pid).memory_info().rss / 2**20]
    return ", ".join(f"{name} {sum(v) / len(v):.0f} MB x{len(v)}" for name, v in roles.items())


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of every process of a server's tree, by role ("other": the rest)."""
    import psutil

    cpu: dict[str, float] = {}
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            name = role(" ".join(process.cmdline())) or "other"
        except psutil.NoSuchProcess:
            continue
        cpu[name] = cpu.get(name, 0.0) + times.user + times.system
    return cpu


def batch_histogram(base_url: str, metric: str) -> dict[int, float]:
    """How many model batches fell in each size bucket so far (bucket's upper bound: count)."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    cumulative: dict[float, float] = {}
    text = requests.get(f"{base_url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name != metric:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels["le"] != "+Inf":
                bound = float(sample.labels["le"])
                cumulative[bound] = cumulative.get(bound, 0.0) + sample.value
    counts, below = {}, 0.0
    for bound in sorted(cumulative):
        counts[int(bound)] = cumulative[bound] - below
        below = cumulative[bound]
    return counts


def snapshot(base_url: str, pid: int, batching: bool) -> tuple[dict[str, float], dict]:
    """The server tree's CPU by role and, when it batches, its batch histogram."""
    if not batching:
        return tree_cpu(pid), {}
    from service.predictor import BATCH_METRIC

    return tree_cpu(pid), batch_histogram(base_url, BATCH_METRIC)


@contextmanager
def bare_server(image_size: int, workers: int, log: Path) -> Iterator[tuple[str, int]]:
    """benchmarks/bare_service.py under `bentoml serve`, with a BentoML home of its own;
    yields its base URL and process id."""
    env = {"BARE_IMAGE_SIZE": str(image_size), "BARE_WORKERS": str(workers),
           "BENTOML_HOME": str(own_home(log.with_suffix(".home")))}
    with spawned_server(["bentoml", "serve", "benchmarks.bare_service:Bare"], env, log,
                        "/readyz", 180) as server:
        yield server
