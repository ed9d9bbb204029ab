"""Serving throughput and CPU: openimager's service, both request forms, against bare routes
of the same framework, the naive tutorial server and the model alone.

The same model (the seed CNN and the default transfer model, MobileNetV3Small, at the training
default of 150 px; untrained weights cost the same to run) is served by `bentoml serve
service.service:Classifier`, loaded with the image as a multipart form (`form`) and as the
request body (`raw`) in turn; then by benchmarks/bare_service.py, BentoML routes that only
decode (`bare-form`: an API taking a multipart file, `bare-raw`: a mounted route reading the
body); then by the tutorial FastAPI app (benchmarks/naive_server.py); all on 127.0.0.1 with the
same number of worker processes. The model alone runs in a process of its own as
predict_on_batch over prepared images at the batch sizes the service formed (read from its
/metrics): the ceiling. Load comes from a separate process (benchmarks/load.py) posting real
JPEGs at each concurrency level. Each case reports the CPU of the server's process tree per
request and the part of it outside the model: the tree's CPU minus images x the model's CPU
per image at those batch sizes (measured with the service's TensorFlow threads). Then the
prediction log's cost: two servers, one logging and one not, loaded in turn. Prints one line
per case and the ratios; timings are noisy on a shared machine, read the ratios.

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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.servers import (  # noqa: E402 - after the project's folder is on the path
    CLASSES,
    bare_server,
    naive_server,
    openimager_server,
    service_threads,
    snapshot,
    worker_memory,
)

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


def cpu_split(before: tuple, after: tuple, result: dict, raw: dict[int, dict],
              model: bool = True) -> dict:
    """CPU ms per request (total, by role), the model's share (none for a server without a
    model) and what is left outside it, the mean batch, and raw predict_on_batch's img/s at
    the batches the server formed."""
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
    model_ms = model_ms if model else 0.0
    return {"total": total, "roles": by_role, "model": model_ms, "outside": total - model_ms,
            "mean_batch": requests / max(1.0, sum(batches.values())),
            "raw_img_s": requests / seconds}


def load(url: str, concurrency: int, seconds: float, images: list[Path], field: str = "image"
         ) -> dict:
    """Run the load generator process once and return its summary; field "-" sends each
    image as the request body."""
    command = [sys.executable, str(ROOT / "benchmarks" / "load.py"), url, field,
               str(concurrency), str(seconds), *map(str, images)]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          timeout=seconds + 300)
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Case:
    """One way of loading a server: the route and the multipart field, or - for a raw body."""

    name: str
    route: str
    field: str


FORM, RAW = Case("form", "/classify", "image"), Case("raw", "/classify", "-")
BARE = (Case("bare-form", "/classify", "image"), Case("bare-raw", "/decode", "-"))
NAIVE = Case("naive", "/classify", "image")


def measured_load(base: str, pid: int, case: Case, concurrency: int, seconds: float,
                  images: list[Path], raw: dict, batching: bool, model: bool = True) -> dict:
    """One load run with the server's CPU and batches around it."""
    before = snapshot(base, pid, batching)
    result = load(f"{base}{case.route}", concurrency, seconds, images, case.field)
    result["cpu"] = cpu_split(before, snapshot(base, pid, batching), result, raw, model)
    return result


def failed(result: dict) -> str:
    """The statuses of failed requests, if any (status 0: the connection failed)."""
    bad = {s: n for s, n in result["statuses"].items() if s != "200"}
    return f" {bad}" if bad else ""


def run_server(cases: tuple[Case, ...], server: object, args: argparse.Namespace,
               images: list[Path], raw: dict, batching: bool = False, model: bool = True
               ) -> dict[str, dict[int, dict]]:
    """Warm a server up, load it at each level with each case in turn (alternating, so a
    change of the machine's load falls on every case alike) and print one line per case."""
    results: dict[str, dict[int, dict]] = {case.name: {} for case in cases}
    with server as (base, pid):
        for case in cases:  # warm-up
            load(f"{base}{case.route}", max(args.levels), min(args.seconds, 3), images,
                 case.field)
        for concurrency in args.levels:
            for case in cases:
                result = measured_load(base, pid, case, concurrency, args.seconds, images, raw,
                                       batching, model)
                results[case.name][concurrency] = result
                print(f"{summary(case.name, concurrency, result)}  "
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
    """Throughput with the prediction log on over off (raw bodies), loading two servers in
    turn; and the CPU ms per request the log adds."""
    c = args.log_level
    totals = {"logged": 0.0, "unlogged": 0.0}
    cpu = {"logged": 0.0, "unlogged": 0.0}
    with openimager_server(tag, args.workers, workdir / "logged.log") as on, \
            openimager_server(tag, args.workers, workdir / "unlogged.log", False) as off:
        for base, _ in (on, off):
            load(f"{base}/classify", c, min(args.seconds, 3), images, "-")  # warm-up
        for turn in range(args.log_rounds):
            # Alternate which goes first: a drift of the machine's speed hits both alike.
            order = [("logged", on), ("unlogged", off)][:: 1 if turn % 2 == 0 else -1]
            for name, (base, pid) in order:
                result = measured_load(base, pid, RAW, c, args.seconds, images, raw, True)
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


def ratio_line(architecture: str, c: int, results: dict[str, dict[int, dict]]) -> str:
    """The goals' ratios at one level: CPU outside the model of each form over the bare raw
    route, throughput over predict_on_batch at the batches each form formed."""
    at = {name: by_level[c] for name, by_level in results.items()}
    outside = {name: result["cpu"]["outside"] for name, result in at.items()}
    bare = max(outside["bare-raw"], 0.01)

    def vs_model(name: str) -> str:
        raw_ips = at[name]["cpu"]["raw_img_s"]
        return (f"{name} {at[name]['rps'] / raw_ips:.2f} (model {raw_ips:.0f} img/s at mean "
                f"batch {at[name]['cpu']['mean_batch']:.1f})")

    return (f"ratios {architecture} c={c}: CPU outside the model per request, raw "
            f"{outside['raw']:.2f} ms / bare raw route {outside['bare-raw']:.2f} ms = "
            f"{outside['raw'] / bare:.2f}x (goal <= 1.3), form {outside['form']:.2f} ms = "
            f"{outside['form'] / bare:.2f}x (bare form route {outside['bare-form']:.2f} ms); "
            f"throughput over predict_on_batch: {vs_model('raw')}, {vs_model('form')}; "
            f"raw/naive {at['raw']['rps'] / at['naive']['rps']:.2f}x")


def bench_model(architecture: str, args: argparse.Namespace, images: list[Path],
                workdir: Path, log_cost: bool) -> list[str]:
    """Every case of one model; returns its ratio lines."""
    tag, model_file = register(workdir, architecture, args.image_size)
    threads = service_threads(args.workers)
    seconds = 0.3 if args.quick else 1.5
    raw = {"all": raw_model(model_file, args.image_size, seconds, 0, images),
           "cpu": raw_model(model_file, args.image_size, seconds, threads, images)}
    print(raw_line(architecture, args, raw, threads, len(images)), flush=True)
    results = run_server((FORM, RAW), openimager_server(
        tag, args.workers, workdir / "bentoml.log"), args, images, raw, batching=True)
    results |= run_server(BARE, bare_server(args.image_size, args.workers, workdir / "bare.log"),
                          args, images, raw, model=False)
    results |= run_server((NAIVE,), naive_server(
        model_file, args.workers, workdir / "naive.log"), args, images, raw)
    lines = [f"{architecture}: {args.workers} worker process(es) each"]
    lines += [ratio_line(architecture, c, results) for c in args.levels]
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
