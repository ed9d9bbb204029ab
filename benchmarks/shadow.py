"""Shadow replay's throughput: `python -m flows shadow` against predict_on_batch on the same
uploads.

Kept uploads (320x240 JPEG photos, every one kept, as the service's own log writer keeps them)
are replayed on two models (the incumbent and a candidate of the same architecture: untrained,
since the cost does not depend on the weights) at 10x steps of count, to show how the cost
grows. Each count runs:

- the command, as a user runs it, in a fresh process under /usr/bin/time -v: wall time with
  the imports, peak memory, and the uploads per second it reports itself (reading, decoding
  both sizes and both models);
- the baseline in another fresh process: the same files decoded once by Pillow in a plain
  thread pool, then predict_on_batch of both models (batch 64) on the decoded arrays; its
  model-only uploads per second is the ceiling a replay can reach on this machine.

    .venv/bin/python benchmarks/shadow.py            # transfer at 150 px; 240, 2,400, 24,000
    .venv/bin/python benchmarks/shadow.py --quick    # seed CNN at 64 px, 30 uploads
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CLASSES = ["Car", "Hamburger", "Sandwich"]
PHOTO = (320, 240)
ROWS_PER_PART = 1000


def make_models(workdir: Path, architecture: str, size: int) -> tuple[str, str]:
    """Register an incumbent and a candidate and promote the incumbent on this host."""
    from flows.promotion.bentoml_store import promote, register_model
    from model.architectures import build

    tags = []
    for seed, role in ((1, "incumbent"), (2, "candidate")):
        folder = workdir / role
        folder.mkdir(parents=True, exist_ok=True)
        build(architecture, size, len(CLASSES), seed, weights="none").save(
            folder / "model.keras")
        (folder / "metrics.json").write_text("{}")
        tags.append(register_model(folder, "bench-shadow", {
            "class_names": CLASSES, "image_size": size, "architecture": architecture}, {}))
    promote(tags[0])
    return tags[0], tags[1]


def keep_uploads(folder: Path, count: int) -> None:
    """count distinct photos kept by the service's own writer, a part every ROWS_PER_PART."""
    import numpy as np

    from service.config import PredictionLogging
    from service.predlog import Answered, PredictionLog, describe
    from tests.servicekit import encoded, picture

    # bounds above count: the service's defaults (10,000 kept) would evict the oldest
    log = PredictionLog(PredictionLogging(directory=str(folder), sample_rate=1.0,
                                          max_mb=1e6, kept_max_images=count, kept_max_mb=1e6))
    rows: list[dict] = []
    flat = np.full((1, len(CLASSES)), 1 / len(CLASSES), np.float32)
    for seed in range(count):
        upload = describe(encoded(picture(seed, PHOTO), quality=90), 1.0)
        rows += log.rows(Answered(datetime.now(UTC), "classify", [uuid.uuid4().hex], [upload],
                                  "bench-shadow:x", tuple(CLASSES), flat, 1.0))
        if len(rows) >= ROWS_PER_PART:
            log.flush(rows)
            rows = []
    log.flush(rows)


def timed(argv: list[str], env: dict[str, str]) -> tuple[str, float, float]:
    """A fresh process under /usr/bin/time -v: its stdout, wall seconds and peak MB."""
    start = time.monotonic()
    done = subprocess.run(["/usr/bin/time", "-v", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if done.returncode not in (0, 1):  # 1: the candidate was refused, a valid outcome
        raise RuntimeError(f"{argv[:4]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return done.stdout, wall, int(peak.group(1)) / 1024 if peak else float("nan")


def baseline_child(images: Path, files: list[str], size: int, threads: int) -> None:
    """Decode the uploads with Pillow in a thread pool, then predict_on_batch both models;
    print the model-only and whole uploads per second."""
    from concurrent.futures import ThreadPoolExecutor

    import keras
    import numpy as np
    from PIL import Image

    start = time.perf_counter()
    models = [keras.saving.load_model(f, compile=False) for f in files]

    def decode(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((size, size)), np.uint8)

    paths = sorted(images.iterdir())
    with ThreadPoolExecutor(threads) as pool:
        pixels = np.stack(list(pool.map(decode, paths)))
    for model in models:  # warm: the first call of each batch shape builds its graph
        model.predict_on_batch(pixels[:64])
        model.predict_on_batch(pixels[len(pixels) // 64 * 64:] if len(pixels) % 64 else
                               pixels[:64])
    model_start = time.perf_counter()
    for model in models:
        for i in range(0, len(pixels), 64):
            model.predict_on_batch(pixels[i:i + 64])
    model_seconds = time.perf_counter() - model_start
    print(json.dumps({"uploads": len(pixels), "model_ips": len(pixels) / model_seconds,
                      "whole_ips": len(pixels) / (time.perf_counter() - start)}))


def measure(count: int, workdir: Path, env: dict[str, str], candidate: str, size: int,
            files: list[str]) -> dict:
    """One count: the command and the baseline, each in a fresh process."""
    log_dir = workdir / f"log-{count}"
    keep_uploads(log_dir, count)
    out, wall, peak = timed([sys.executable, "-m", "flows", "shadow", "--candidate", candidate,
                             "--workspace", str(workdir / "ws"), "--log-dir", str(log_dir),
                             "--json"], {**env, "OPENIMAGER_SHADOW_MAX_IMAGES": str(count)})
    report = json.loads(out)
    base_out, base_wall, base_peak = timed(
        [sys.executable, __file__, "--baseline-child", str(log_dir / "images"), str(size),
         *files], env)
    base = json.loads(base_out.strip().splitlines()[-1])
    return {"uploads": report["images"], "command_wall_s": round(wall, 2),
            "command_peak_mb": round(peak), "replay_ips": report["images_per_second"],
            "replay_s": report["seconds"], "baseline_wall_s": round(base_wall, 2),
            "baseline_peak_mb": round(base_peak), "model_ips": round(base["model_ips"], 1),
            "baseline_whole_ips": round(base["whole_ips"], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--counts", default="240,2400,24000")
    parser.add_argument("--architecture", default="transfer")
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--baseline-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        images, size, *files = args.baseline_child
        baseline_child(Path(images), files, int(size), len(os.sched_getaffinity(0)))
        return 0
    counts = [30] if args.quick else [int(c) for c in args.counts.split(",")]
    architecture, size = ("seed-cnn", 64) if args.quick else (args.architecture,
                                                             args.image_size)
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as temp:
        workdir = Path(temp)
        for name in ("home", "tmp"):
            (workdir / name).mkdir()
        env = {**os.environ, "BENTOML_HOME": str(workdir / "home" / "bentoml"),
               "HOME": str(workdir / "home"), "TMPDIR": str(workdir / "tmp"),
               "BENTOML_DO_NOT_TRACK": "true", "OPENIMAGER_MODEL_NAME": "bench-shadow"}
        os.environ.update({k: env[k] for k in ("BENTOML_HOME", "BENTOML_DO_NOT_TRACK")})
        incumbent, candidate = make_models(workdir, architecture, size)
        import bentoml

        files = [bentoml.models.get(t).path_of("model.keras") for t in (incumbent, candidate)]
        results = [measure(count, workdir, env, candidate, size, files) for count in counts]
    print(json.dumps({"architecture": architecture, "image_size": size, "results": results}))
    for r in results:
        print(f"shadow {architecture} {size}px, {r['uploads']} uploads: replay "
              f"{r['replay_ips']} uploads/s in-process ({r['replay_s']} s), the command "
              f"{r['command_wall_s']} s wall with imports, peak {r['command_peak_mb']} MB; "
              f"predict_on_batch of both models {r['model_ips']} uploads/s "
              f"(replay/predict_on_batch {r['replay_ips'] / r['model_ips']:.2f}x), baseline "
              f"whole {r['baseline_whole_ips']} uploads/s, {r['baseline_wall_s']} s wall, peak "
              f"{r['baseline_peak_mb']} MB")
    if len(results) > 1:
        first, last = results[0], results[-1]
        slope = (last["command_wall_s"] - first["command_wall_s"]) / (
            last["uploads"] - first["uploads"])
        print(f"shadow slope: {slope * 1000:.2f} ms of command wall time per extra upload "
              f"({first['uploads']} -> {last['uploads']}); peak memory "
              f"{first['command_peak_mb']} -> {last['command_peak_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
