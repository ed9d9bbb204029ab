"""Downloading images at network speed: the seed's way, the peers' way and openimager.

A local server (`tests.imageserver`, its own process) serves synthetic JPEGs of about 150 KB,
each unique, with 50 ms added to every request. Each case runs in its own child process into
an empty store, and reports images/s and CPU seconds per image (user + system, all threads):

- seed: one `requests.get` after another (the seed without its one-second rate limiter);
- pool20: a 20-thread pool, one `requests.get` per image (the peers' way);
- openimager: `download_images` with its defaults (64 in flight, keep-alive, each file
  checked against OriginalSize/OriginalMD5 and its JPEG structure before the rename) from the
  Flickr-style URLs, and the same from the CVDF-style bucket through boto3 (`cvdf`).

Then the ratios of speed and of CPU per image, and the concurrency bound (requests in flight /
latency). A last line measures the image check alone: the structure walk against Pillow's
draft-mode (1/8 scale) decode it replaces and a full decode.

    python benchmarks/download.py            # 2,000 images, 50 ms latency
    python benchmarks/download.py --quick    # 60 images, 10 ms, for the test suite
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = ("seed", "pool20", "openimager", "cvdf")
BUCKET = "open-images-dataset"


def cpu_seconds() -> float:
    """User and system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def image_ids(count: int) -> list[str]:
    return [f"{n:016x}" for n in range(1, count + 1)]


def fetch_with_requests(url: str, dest: Path) -> None:
    """The seed's and the peers' fetch: one request, whole body in memory, written out."""
    import requests

    response = requests.get(url, timeout=60)
    response.raise_for_status()
    dest.write_bytes(response.content)


def run_case(case: str, url: str, count: int, store: Path) -> dict:
    """Run one case in this process; return its counts and timings."""
    import pandas as pd

    from flows.openimages.download import download_images
    from flows.openimages.imagecheck import md5_base64
    from tests.imageserver import SyntheticImages

    ids = image_ids(count)
    store.mkdir(parents=True, exist_ok=True)
    if case in ("seed", "pool20"):
        jobs = [(f"{url}/original/{i}.jpg", store / f"{i}.jpg") for i in ids]
        start, cpu = time.perf_counter(), cpu_seconds()
        if case == "seed":
            for job in jobs:
                fetch_with_requests(*job)
        else:
            with ThreadPoolExecutor(20) as pool:
                list(pool.map(lambda job: fetch_with_requests(*job), jobs))
        ok = len(list(store.glob("*.jpg")))
    else:
        synthetic = SyntheticImages()
        rows = []
        for i in ids:  # the published size and MD5 of each image, as Open Images lists them
            body = synthetic.image(int(i, 16))
            rows.append({"ImageID": i, "Subset": "train", "OriginalURL": f"{url}/original/{i}.jpg",
                         "Thumbnail300KURL": "", "OriginalSize": len(body),
                         "OriginalMD5": md5_base64(hashlib.md5(body).hexdigest())})
        table = pd.DataFrame(rows)
        sources = ("flickr",) if case == "openimager" else ("cvdf",)
        start, cpu = time.perf_counter(), cpu_seconds()
        result = download_images(table, store, sources=sources, endpoint_url=url, progress=False)
        ok = int((result.Status == "ok").sum())
    return {"case": case, "images": count, "ok": ok, "seconds": time.perf_counter() - start,
            "cpu": cpu_seconds() - cpu}


def process_cpu(pid: int) -> float:
    """CPU seconds a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(case: str, url: str, count: int, workdir: Path, server: int) -> dict:
    """Run a case in a child process, on an empty store; add the server's CPU meanwhile."""
    store = workdir / case
    shutil.rmtree(store, ignore_errors=True)
    served = process_cpu(server)
    done = subprocess.run([sys.executable, __file__, "--case", case, "--url", url, "--count",
                           str(count), "--store", str(store)], capture_output=True, text=True,
                          check=True, timeout=3600)
    served = process_cpu(server) - served
    shutil.rmtree(store, ignore_errors=True)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "server_cpu": served}


def check_costs(samples: int = 40) -> str:
    """CPU per image of the structure check against decoding, and truncations each catches."""
    from PIL import Image

    from flows.openimages.imagecheck import BadImage, check_image, decode_check
    from tests.imageserver import SyntheticImages

    synthetic = SyntheticImages()
    bodies = [synthetic.image(n) for n in range(samples)]
    costs = {}
    for name, check in (("structure", check_image), ("draft", decode_check),
                        ("full", lambda body: Image.open(io.BytesIO(body)).load())):
        start = cpu_seconds()
        for body in bodies:
            check(body)
        costs[name] = (cpu_seconds() - start) / samples
    caught = dict.fromkeys(("structure", "draft"), 0)
    for n, body in enumerate(bodies):  # cut each somewhere between 5% and 99.9%
        cut = body[: int(len(body) * (0.05 + 0.949 * n / samples))]
        for name, check in (("structure", check_image), ("draft", decode_check)):
            try:
                check(cut)
            except BadImage:
                caught[name] += 1
    return (f"image check: structure {costs['structure'] * 1e3:.2f} ms CPU/image, draft decode "
            f"(1/8 scale) {costs['draft'] * 1e3:.2f} ms, full decode {costs['full'] * 1e3:.2f} "
            f"ms ({costs['draft'] / costs['structure']:.0f}x the structure check); truncated "
            f"copies caught: structure {caught['structure']}/{samples}, draft decode "
            f"{caught['draft']}/{samples}")


def main() -> None:
    """Start the server, run every case, print one line per case and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 images, 10 ms latency")
    parser.add_argument("--count", type=int)
    parser.add_argument("--latency", type=float)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--url")
    parser.add_argument("--store", type=Path)
    args = parser.parse_args()
    if args.case:  # child process
        print(json.dumps(run_case(args.case, args.url, args.count, args.store)))
        return
    count = args.count or (60 if args.quick else 2000)
    latency = args.latency if args.latency is not None else (0.01 if args.quick else 0.05)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="openimager-download-bench-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "tests.imageserver", "--latency",
                               str(latency), "--until-stdin-closes"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        url = server.stdout.readline().strip()
        print(f"{count} images of ~150 KB, {latency * 1e3:.0f} ms added latency, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start",
              flush=True)
        results = {}
        for case in CASES:
            r = results[case] = measure(case, url, count, workdir, server.pid)
            print(f"download {case:>10}: {r['ok']}/{r['images']} images in {r['seconds']:.1f} s, "
                  f"{r['images'] / r['seconds']:.0f} images/s, "
                  f"{r['cpu'] / r['images'] * 1e3:.2f} ms CPU/image "
                  f"(server {r['server_cpu'] / r['images'] * 1e3:.2f})", flush=True)
    finally:
        server.kill()
        server.wait()
    from flows.openimages.downloader import DownloadOptions

    rate = {case: r["images"] / r["seconds"] for case, r in results.items()}
    in_flight = DownloadOptions().workers
    bound = in_flight / latency
    print(f"ratios: openimager/seed {rate['openimager'] / rate['seed']:.1f}x (target >= 20x), "
          f"openimager/pool20 {rate['openimager'] / rate['pool20']:.1f}x (target >= 2x), "
          f"{rate['openimager'] / bound:.0%} of the concurrency bound {in_flight} in flight / "
          f"{latency * 1e3:.0f} ms = {bound:.0f} images/s (target >= 70%); "
          f"cvdf/pool20 {rate['cvdf'] / rate['pool20']:.1f}x")
    cpu = {case: r["cpu"] / r["images"] for case, r in results.items()}
    print(f"CPU per image: openimager (verified) / pool20 (unverified) "
          f"{cpu['openimager'] / cpu['pool20']:.2f}x (target <= 1), cvdf / pool20 "
          f"{cpu['cvdf'] / cpu['pool20']:.2f}x")
    print(check_costs(12 if args.quick else 40))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
