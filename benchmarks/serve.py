"""Serving throughput and CPU: openimager's service vs the naive tutorial server vs the model.

The same model (the seed CNN and the default transfer model, MobileNetV3Small, at the training
default of 150 px; untrained weights cost the same to run) is served (a) by `bentoml serve
service.service:Classifier` and (b) by the tutorial FastAPI app in benchmarks/naive_server.py,
both on 127.0.0.1 with the same number of worker processes, and (c) run alone, in a process of its
own, as predict_on_batch over prepared images at the batch sizes the service formed (read from
its /metrics): the ceiling. Load comes from a separate process (benchmarks/load.py) posting real
JPEGs at each concurrency level. Besides throughput, each case reports the CPU of the server's
process tree per request, and the part of it spent outside the model: the tree's CPU minus
images x the model's CPU per image at those batch sizes (measured with the service's
TensorFlow threads). Then the prediction log's cost: two openimager servers, one logging and
one not, loaded in turn (alternating rounds) at one concurrency. Prints one line per case and
the ratios; timings are noisy on a shared machine, read the ratios.

    python benchmarks/serve.py            # full: both models, c = 1, 16, 64, 10 s each
    python benchmarks/serve.py --quick    # a tiny run for the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASSES = ["Hamburger", "Sandwich"]
MODELS = ("seed-cnn", "transfer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options; --quick shrinks everything."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"architectures to serve, of {', '.join(MODELS)}")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes of both servers (the service's default: 1)")
    parser.add_argument("--levels", default="1,16,64", help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=10, help="load time per level")
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--images", type=Path, default=ROOT / "data" / "sample" / "images")
    parser.add_argument("--log-level", type=int, default=16,
                        help="concurrency of the logging on/off comparison (first model)")
    parser.add_argument("--log-rounds", type=int, default=3, help="alternations of on and off")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.workers, args.levels, args.seconds = "seed-cnn", 1, "1,4", 1.0
        args.image_size, args.log_level, args.log_rounds = 32, 4, 1
    args.models = args.models.split(",")
    if unknown := set(args.models) - set(MODELS):
        parser.error(f"unknown model {', '.join(sorted(unknown))}: choose of {', '.join(MODELS)}")
    args.levels = [int(c) for c in args.levels.split(",")]
    return args


def register(workdir: Path, architecture: str, image_size: int) -> tuple[str, Path]:
    """Save and register the benchmark model; return its tag and file."""
    import bentoml

    from flows.promotion.bentoml_store import register_model
    from model.architectures import build

    workdir.mkdir(parents=True, exist_ok=True)
    build(architecture, image_size, len(CLASSES), 1337, weights=None).save(
        workdir / "model.keras")
    (workdir / "metrics.json").write_text(json.dumps({"accuracy": 0.0}))
    metadata = {"class_names": CLASSES, "class_mids": ["/m/0cdn1", "/m/0l515"],
                "image_size": image_size, "architecture": architecture,
                "dataset_id": "benchmark", "git_commit": "benchmark", "metrics": {}}
    tag = register_model(workdir, "openimager-classifier", metadata, {})
    return tag, Path(bentoml.models.get(tag).path_of("model.keras"))


def raw_model(model_file: Path, size: int, seconds: float, threads: int, images: list[Path]
              ) -> dict[int, dict[str, float]]:
    """predict_on_batch's img/s and CPU ms per image by batch size (benchmarks/rawmodel.py)."""
    command = [sys.executable, str(ROOT / "benchmarks" / "rawmodel.py"), str(model_file),
               str(size), str(seconds), str(threads), *map(str, images[:32])]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env,
                          timeout=600)
    return {int(b): v for b, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


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


def cpu_split(before: tuple, after: tuple, result: dict, raw: dict[int, dict]) -> dict:
    """CPU ms per request (total, by role), the model's share and what is left outside it,
    the mean batch, and raw predict_on_batch's img/s at the batches the server formed."""
    (cpu0, hist0), (cpu1, hist1) = before, after
    requests = max(1, result["requests"])
    by_role = {k: 1000 * (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) / requests for k in cpu1}
    batches = {b: hist1[b] - hist0.get(b, 0.0) for b in hist1}
    if not any(batches.values()):  # no adaptive batching: one image per call
        batches = {1: float(requests)}
    # A bucket's batches are counted at its upper bound, scaled so images match requests: a
    # slight overestimate of batch sizes, so of the model's per-image efficiency.
    images = {b: n * b for b, n in batches.items() if n}
    scale = requests / sum(images.values())
    model_ms = sum(n * scale * raw["cpu"][b]["cpu_ms"] for b, n in images.items()) / requests
    seconds = sum(n * scale / raw["all"][b]["img_s"] for b, n in images.items())
    total = sum(by_role.values())
    return {"total": total, "roles": by_role, "model": model_ms, "outside": total - model_ms,
            "mean_batch": requests / max(1.0, sum(batches.values())),
            "raw_img_s": requests / seconds}


def load(url: str, concurrency: int, seconds: float, images: list[Path]) -> dict:
    """Run the load generator process once and return its summary."""
    field = "image"
    command = [sys.executable, str(ROOT / "benchmarks" / "load.py"), url, field,
               str(concurrency), str(seconds), *map(str, images)]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          timeout=seconds + 300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measured_load(base: str, pid: int, concurrency: int, seconds: float, images: list[Path],
                  raw: dict, batching: bool) -> dict:
    """One load run with the server's CPU and batches around it."""
    before = snapshot(base, pid, batching)
    result = load(f"{base}/classify", concurrency, seconds, images)
    result["cpu"] = cpu_split(before, snapshot(base, pid, batching), result, raw)
    return result


def failed(result: dict) -> str:
    """The statuses of failed requests, if any (status 0: the connection failed)."""
    bad = {s: n for s, n in result["statuses"].items() if s != "200"}
    return f" {bad}" if bad else ""


def run_server(name: str, server: object, args: argparse.Namespace, images: list[Path],
               raw: dict) -> dict[int, dict]:
    """Warm a server up, load it at each level and print one line per case."""
    results = {}
    batching = name == "openimager"
    with server as (base, pid):
        load(f"{base}/classify", max(args.levels), min(args.seconds, 3), images)  # warm-up
        for concurrency in args.levels:
            result = measured_load(base, pid, concurrency, args.seconds, images, raw, batching)
            results[concurrency] = result
            print(f"{summary(name, concurrency, result)}  "
                  f"memory per worker: {worker_memory(pid)}", flush=True)
    return results


def summary(name: str, concurrency: int, result: dict) -> str:
    """One case's line: throughput, latency, errors, and CPU per request."""
    cpu = result["cpu"]
    roles = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu["roles"].items()) if v >= 0.05)
    return (f"{name:<10} c={concurrency:<3} {result['rps']:7.1f} req/s  "
            f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
            f"errors {result['errors']}{failed(result)}  CPU/request {cpu['total']:.1f} ms "
            f"({roles}): model {cpu['model']:.1f}, outside {cpu['outside']:.1f}, "
            f"mean batch {cpu['mean_batch']:.1f}")


def logging_cost(tag: str, args: argparse.Namespace, images: list[Path], workdir: Path,
                 raw: dict) -> tuple[float, float]:
    """Throughput with the prediction log on over off, loading two servers in turn; and the
    CPU ms per request the log adds."""
    c = args.log_level
    totals = {"logged": 0.0, "unlogged": 0.0}
    cpu = {"logged": 0.0, "unlogged": 0.0}
    with openimager_server(tag, args.workers, workdir / "logged.log") as on, \
            openimager_server(tag, args.workers, workdir / "unlogged.log", False) as off:
        for base, _ in (on, off):
            load(f"{base}/classify", c, min(args.seconds, 3), images)  # warm-up, discarded
        for turn in range(args.log_rounds):
            # Alternate which goes first: a drift of the machine's speed hits both alike.
            order = [("logged", on), ("unlogged", off)][:: 1 if turn % 2 == 0 else -1]
            for name, (base, pid) in order:
                result = measured_load(base, pid, c, args.seconds, images, raw, True)
                totals[name] += result["rps"]
                cpu[name] += result["cpu"]["total"] / args.log_rounds
                print(summary(name, c, result), flush=True)
    return totals["logged"] / totals["unlogged"], cpu["logged"] - cpu["unlogged"]


def raw_line(architecture: str, args: argparse.Namespace, raw: dict, threads: int,
             count: int) -> str:
    """The model-alone line: img/s with every core, CPU per image with the service's threads."""
    sizes = ", ".join(f"b={b} {raw['all'][b]['img_s']:.0f} img/s {raw['cpu'][b]['cpu_ms']:.2f} ms"
                      for b in raw["all"])
    return (f"raw {architecture} predict_on_batch, {args.image_size} px, {count} JPEGs "
            f"(img/s with every core, CPU ms/img with {threads} TF thread(s)): {sizes}")


def bench_model(architecture: str, args: argparse.Namespace, images: list[Path],
                workdir: Path, log_cost: bool) -> list[str]:
    """Every case of one model; returns its ratio lines."""
    tag, model_file = register(workdir, architecture, args.image_size)
    threads = service_threads(args.workers)
    seconds = 0.3 if args.quick else 1.5
    raw = {"all": raw_model(model_file, args.image_size, seconds, 0, images),
           "cpu": raw_model(model_file, args.image_size, seconds, threads, images)}
    print(raw_line(architecture, args, raw, threads, len(images)), flush=True)
    ours = run_server("openimager", openimager_server(
        tag, args.workers, workdir / "bentoml.log"), args, images, raw)
    naive = run_server("naive", naive_server(
        model_file, args.workers, workdir / "naive.log"), args, images, raw)
    lines = [f"{architecture}: {args.workers} worker process(es) each"]
    for c in args.levels:
        raw_ips, vs_naive = ours[c]["cpu"]["raw_img_s"], ours[c]["rps"] / naive[c]["rps"]
        lines.append(
            f"ratios {architecture} c={c}: openimager/naive {vs_naive:.2f}x,"
            f" openimager/raw {ours[c]['rps'] / raw_ips:.2f} (raw {raw_ips:.0f} img/s at the "
            f"service's batches), naive/raw {naive[c]['rps'] / raw['all'][1]['img_s']:.2f}; "
            f"CPU outside the model {ours[c]['cpu']['outside']:.1f} ms/request "
            f"(naive {naive[c]['cpu']['outside']:.1f})")
    if log_cost:
        logged, extra_ms = logging_cost(tag, args, images, workdir, raw)
        lines.append(f"prediction log c={args.log_level}: logged/unlogged throughput "
                     f"{logged:.3f}x (cost {(1 - logged) * 100:+.1f}%, {extra_ms:+.2f} ms CPU/"
                     f"request, {args.log_rounds} alternating rounds)")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run every case and print the ratios."""
    args = parse_args(argv)
    images = sorted(args.images.rglob("*.jpg"))[: 8 if args.quick else 64]
    lines = []
    with tempfile.TemporaryDirectory(prefix="openimager-bench-serve-") as tmp:
        workdir = Path(tmp)
        os.environ["BENTOML_HOME"] = str(workdir / "bentoml")  # before bentoml is imported
        for index, architecture in enumerate(args.models):
            lines += bench_model(architecture, args, images, workdir / architecture, index == 0)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
