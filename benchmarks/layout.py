"""Service layout: the two-process service (HTTP workers + model service over loopback) vs one
process per worker holding the model (benchmarks/one_process.py, an in-process micro-batcher).

Both serve the same model with the same number of HTTP workers, without the prediction log,
and are loaded in turn (alternating rounds) at one concurrency. Each line gives throughput
and CPU per request of the server's process tree, split into the model's share (measured
alone with predict_on_batch at the batch sizes the server formed) and the rest. The last lines
give the ratios.

    python benchmarks/layout.py                       # seed CNN and transfer, c=16, 3 rounds
    python benchmarks/layout.py --quick               # a tiny run for the test suite
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import serve  # noqa: E402 - a sibling script


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options; --quick shrinks everything."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=",".join(serve.MODELS))
    parser.add_argument("--workers", type=int, default=2, help="HTTP workers of both layouts")
    parser.add_argument("--level", type=int, default=16, help="concurrency")
    parser.add_argument("--seconds", type=float, default=10, help="load time per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the layouts")
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--images", type=Path, default=ROOT / "data" / "sample" / "images")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.workers, args.level, args.seconds = "seed-cnn", 1, 4, 1.0
        args.rounds, args.image_size = 1, 32
    args.models = args.models.split(",")
    return args


@contextmanager
def one_process_server(tag: str, workers: int, log: Path) -> Iterator[tuple[str, int]]:
    """benchmarks/one_process.py under `bentoml serve`; yields its base URL and process id."""
    env = {"OPENIMAGER_MODEL_TAG": tag, "OPENIMAGER_WORKERS": str(workers),
           "BENTOML_HOME": str(serve.own_home(log.with_suffix(".home"))),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    with serve.spawned_server(["bentoml", "serve", "benchmarks.one_process:OneProcess"], env,
                              log, "/readyz", 600) as server:
        yield server


def compare(architecture: str, args: argparse.Namespace, images: list[Path], workdir: Path
            ) -> str:
    """Alternate the two layouts on one model; return the ratio line."""
    from one_process import BATCH_METRIC  # imports bentoml: after BENTOML_HOME is set

    tag, model_file = serve.register(workdir, architecture, args.image_size)
    threads = serve.service_threads(args.workers)
    seconds = 0.3 if args.quick else 1.5
    raw = {"all": serve.raw_model(model_file, args.image_size, seconds, 0, images),
           "cpu": serve.raw_model(model_file, args.image_size, seconds, threads, images)}
    print(serve.raw_line(architecture, args, raw, threads, len(images)), flush=True)
    totals = {"two": [0.0, 0.0, 0.0], "one": [0.0, 0.0, 0.0]}  # req/s, outside ms, raw img/s
    with serve.openimager_server(tag, args.workers, workdir / "two.log", False) as two, \
            one_process_server(tag, args.workers, workdir / "one.log") as one:
        servers = {"two": (two, True), "one": (one, BATCH_METRIC)}
        for (base, _), _ in servers.values():
            serve.load(f"{base}/classify", args.level, min(args.seconds, 3), images)  # warm-up
        for turn in range(args.rounds):
            for name in ("two", "one")[:: 1 if turn % 2 == 0 else -1]:
                (base, pid), batching = servers[name]
                result = serve.measured_load(base, pid, args.level, args.seconds, images, raw,
                                             batching)
                for i, value in enumerate((result["rps"], result["cpu"]["outside"],
                                           result["cpu"]["raw_img_s"])):
                    totals[name][i] += value / args.rounds
                print(serve.summary(f"{name}-proc", args.level, result), flush=True)
    (two_rps, two_out, two_raw), (one_rps, one_out, one_raw) = totals["two"], totals["one"]
    return (f"layout {architecture} c={args.level}: one-process/two-process throughput "
            f"{one_rps / two_rps:.2f}x; of raw predict_on_batch at their batches "
            f"{two_rps / two_raw:.2f} (two) vs {one_rps / one_raw:.2f} (one); CPU outside the "
            f"model {two_out:.1f} vs {one_out:.1f} ms/request ({args.rounds} alternating rounds)")


def main(argv: list[str] | None = None) -> int:
    """Compare the layouts on each model and print the ratios."""
    args = parse_args(argv)
    images = sorted(args.images.rglob("*.jpg"))[: 8 if args.quick else 64]
    with tempfile.TemporaryDirectory(prefix="openimager-bench-layout-") as tmp:
        os.environ["BENTOML_HOME"] = str(Path(tmp) / "bentoml")  # before bentoml is imported
        lines = [compare(model, args, images, Path(tmp) / model) for model in args.models]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
