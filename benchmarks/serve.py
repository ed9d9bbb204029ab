"""Serving throughput: openimager's service vs the naive tutorial server vs raw model.predict.

The same model (the seed CNN at the training default of 150 px; untrained weights cost the
same to run) is served (a) by `bentoml serve service.service:Classifier` and (b) by the
tutorial FastAPI app in benchmarks/naive_server.py, both on 127.0.0.1 with the same number
of HTTP workers, and (c) run in-process as batched model.predict over prepared images: the
ceiling. Load comes from a separate process (benchmarks/load.py) posting real JPEGs at each
concurrency level. Then the prediction log's cost: two openimager servers, one logging and one
not, loaded in turn (alternating rounds) at one concurrency. Prints one line per case and the
ratios; timings are noisy on a shared machine, read the ratios.

    python benchmarks/serve.py            # full: c = 1, 16, 64, 10 s each
    python benchmarks/serve.py --quick    # a tiny run for the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASSES = ["Hamburger", "Sandwich"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options; --quick shrinks everything."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=2, help="HTTP workers of both servers")
    parser.add_argument("--levels", default="1,16,64", help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=10, help="load time per level")
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--images", type=Path, default=ROOT / "data" / "sample" / "images")
    parser.add_argument("--log-level", type=int, default=16,
                        help="concurrency of the logging on/off comparison")
    parser.add_argument("--log-rounds", type=int, default=3, help="alternations of on and off")
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.levels, args.seconds, args.image_size = 1, "1,4", 1.0, 32
        args.log_level, args.log_rounds = 4, 1
    args.levels = [int(c) for c in args.levels.split(",")]
    return args


def register(workdir: Path, image_size: int) -> tuple[str, Path]:
    """Save and register the benchmark model; return its tag and file."""
    import bentoml

    from flows.model_store import register_model
    from model.architectures import seed_cnn

    seed_cnn(image_size, len(CLASSES)).save(workdir / "model.keras")
    (workdir / "metrics.json").write_text(json.dumps({"accuracy": 0.0}))
    metadata = {"class_names": CLASSES, "class_mids": ["/m/0cdn1", "/m/0l515"],
                "image_size": image_size, "architecture": "seed_cnn", "dataset_id": "benchmark",
                "git_commit": "benchmark", "metrics": {}}
    tag = register_model(workdir, "openimager-classifier", metadata, {})
    return tag, Path(bentoml.models.get(tag).path_of("model.keras"))


def raw_throughput(model_file: Path, images: list[Path], size: int, seconds: float) -> float:
    """Images per second of batched model.predict on prepared images, in this process."""
    import keras
    import numpy as np

    from service.images import prepare

    model = keras.saving.load_model(model_file, compile=False)
    batch = np.stack([prepare(images[i % len(images)], size) for i in range(256)])
    model.predict(batch[:64], batch_size=32, verbose=0)  # trace once
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict(batch, batch_size=32, verbose=0)
        done += len(batch)
    return done / (time.perf_counter() - start)


@contextmanager
def openimager_server(tag: str, workers: int, log: Path, logging: bool = True
                      ) -> Iterator[tuple[str, int]]:
    """openimager's service, logging predictions beside its log or not; yields its URL and
    process id."""
    from flows.servers.local import BentoServer

    env = {"OPENIMAGER_WORKERS": str(workers), "OPENIMAGER_PREDICTION_LOG": str(logging),
           "OPENIMAGER_PREDICTION_LOG_DIR": str(log.with_suffix(".predictions"))}
    with BentoServer(tag, log_path=log, env=env) as server:
        yield f"{server.url}/classify", server.process.pid


@contextmanager
def naive_server(model_file: Path, workers: int, log: Path) -> Iterator[tuple[str, int]]:
    """The tutorial FastAPI app under uvicorn; yields its URL and process id."""
    from flows.servers.local import TELEMETRY_OFF, free_port, stop_group, wait_ready

    port = free_port()
    env = {**os.environ, **TELEMETRY_OFF, "NAIVE_MODEL": str(model_file),
           "NAIVE_CLASSES": json.dumps(CLASSES)}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "benchmarks.naive_server:app", "--host",
             "127.0.0.1", "--port", str(port), "--workers", str(workers), "--no-access-log"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/docs", 180, process)
        yield f"http://127.0.0.1:{port}/classify", process.pid
    finally:
        stop_group(process)


def worker_memory(pid: int) -> str:
    """Resident memory of each worker process under pid, by role."""
    import psutil

    roles: dict[str, list[float]] = {}
    for child in psutil.Process(pid).children(recursive=True):
        command = " ".join(child.cmdline())
        if "_bentoml_impl.worker" in command:
            role = "model" if "openimager-model" in command else "http"
        elif "spawn_main" in command:
            role = "worker"
        else:
            continue  # supervisors and trackers
        roles.setdefault(role, []).append(child.memory_info().rss / 2**20)
    if not roles:  # a single uvicorn worker runs in the main process
        roles["worker"] = [psutil.Process(pid).memory_info().rss / 2**20]
    return ", ".join(f"{role} {sum(v) / len(v):.0f} MB x{len(v)}" for role, v in roles.items())


def load(url: str, concurrency: int, seconds: float, images: list[Path]) -> dict:
    """Run the load generator process once and return its summary."""
    field = "image"
    command = [sys.executable, str(ROOT / "benchmarks" / "load.py"), url, field,
               str(concurrency), str(seconds), *map(str, images)]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          timeout=seconds + 300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def failed(result: dict) -> str:
    """The statuses of failed requests, if any (status 0: the connection failed)."""
    bad = {s: n for s, n in result["statuses"].items() if s != "200"}
    return f" {bad}" if bad else ""


def run_server(name: str, server: object, args: argparse.Namespace, images: list[Path]
               ) -> dict[int, dict]:
    """Warm a server up, load it at each level and print one line per case."""
    results = {}
    with server as (url, pid):
        load(url, max(args.levels), min(args.seconds, 3), images)  # warm-up, discarded
        for concurrency in args.levels:
            result = load(url, concurrency, args.seconds, images)
            results[concurrency] = result
            print(f"{summary(name, concurrency, result)}  "
                  f"memory per worker: {worker_memory(pid)}", flush=True)
    return results


def summary(name: str, concurrency: int, result: dict) -> str:
    """One case's line."""
    return (f"{name:<10} c={concurrency:<3} {result['rps']:7.1f} req/s  "
            f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
            f"errors {result['errors']}{failed(result)}")


def logging_cost(tag: str, args: argparse.Namespace, images: list[Path], workdir: Path
                 ) -> float:
    """Throughput with the prediction log on over off, loading two servers in turn."""
    c = args.log_level
    totals = {"logged": 0.0, "unlogged": 0.0}
    with openimager_server(tag, args.workers, workdir / "logged.log") as (on, _), \
            openimager_server(tag, args.workers, workdir / "unlogged.log", False) as (off, _):
        for url in (on, off):
            load(url, c, min(args.seconds, 3), images)  # warm-up, discarded
        for turn in range(args.log_rounds):
            # Alternate which goes first: a drift of the machine's speed hits both alike.
            order = [("logged", on), ("unlogged", off)][:: 1 if turn % 2 == 0 else -1]
            for name, url in order:
                result = load(url, c, args.seconds, images)
                totals[name] += result["rps"]
                print(summary(name, c, result), flush=True)
    return totals["logged"] / totals["unlogged"]


def main(argv: list[str] | None = None) -> int:
    """Run every case and print the ratios."""
    args = parse_args(argv)
    images = sorted(args.images.rglob("*.jpg"))[: 8 if args.quick else 64]
    with tempfile.TemporaryDirectory(prefix="openimager-bench-serve-") as tmp:
        workdir = Path(tmp)
        os.environ["BENTOML_HOME"] = str(workdir / "bentoml")  # before bentoml is imported
        tag, model_file = register(workdir, args.image_size)
        raw = raw_throughput(model_file, images, args.image_size, args.seconds)
        print(f"raw model.predict, batches of 32, in-process: {raw:.1f} img/s "
              f"({args.image_size} px model, {len(images)} JPEGs)", flush=True)
        ours = run_server("openimager", openimager_server(
            tag, args.workers, workdir / "bentoml.log"), args, images)
        naive = run_server("naive", naive_server(
            model_file, args.workers, workdir / "naive.log"), args, images)
        logged = logging_cost(tag, args, images, workdir)
    print(f"workers: {args.workers} HTTP each (openimager adds 1 model worker)")
    for c in args.levels:
        print(f"ratios c={c}: openimager/naive {ours[c]['rps'] / naive[c]['rps']:.2f}x, "
              f"openimager/raw {ours[c]['rps'] / raw:.2f}, naive/raw {naive[c]['rps'] / raw:.2f}")
    print(f"prediction log c={args.log_level}: logged/unlogged throughput {logged:.3f}x "
          f"(cost {(1 - logged) * 100:+.1f}%, {args.log_rounds} alternating rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
