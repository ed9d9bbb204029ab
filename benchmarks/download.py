"""Downloading images at network speed: the seed's way, the peers' way and openimager.

A local server (`tests.imageserver`, its own process) serves synthetic JPEGs of about 150 KB,
each unique, with 50 ms added to every request. Each case runs in its own child process into
an empty store, and reports images/s and CPU seconds per image (user + system, all threads):

- seed: one `requests.get` after another (the seed without its one-second rate limiter);
- pool20: a 20-thread pool, one `requests.get` per image (the peers' way);
- openimager: `download_images` with its defaults (64 in flight, keep-alive, each file
  checked against OriginalSize/OriginalMD5 and its JPEG structure before the rename) from the
  Flickr-style URLs, and the same from the CVDF-style bucket (`cvdf`: unsigned plain GETs,
  each file's MD5 also checked against the ETag);
- boto3: the `cvdf` case with the bucket read through boto3's unsigned GetObject instead, as
  openimager did before (the figures that chose plain GETs).

The machine is shared, so the last four cases run alternated, in rounds, each round in a
rotated order, and the figures are their totals; the seed runs once, on at most 200 images
(it is latency-bound: one request at a time). No store is deleted before the end of the run:
ext4 without a journal walks past inodes freed in the last minutes when it creates a file,
which made a case that followed another one's deletion pay up to a third of its CPU there.

Then the ratios of speed and of CPU per image, and the concurrency bound (requests in flight /
latency). A last line measures the image check alone: the structure walk against Pillow's
draft-mode (1/8 scale) decode it replaces and a full decode.

    python benchmarks/download.py            # 2,000 images per case and round, 3 rounds, 50 ms
    python benchmarks/download.py --quick    # 60 images, 1 round, 10 ms, for the test suite
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

CASES = ("seed", "pool20", "openimager", "cvdf", "boto3")
ALTERNATED = CASES[1:]
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


def boto3_source() -> type:
    """S3Source with the bucket read through boto3's unsigned GetObject (the former way)."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    from flows.openimages import sources as src

    class Boto3Source(src.S3Source):
        def __init__(self, gate, bucket, endpoint_url, connect, read, block) -> None:
            super().__init__(gate, bucket, endpoint_url, connect, read, block)
            self.bucket = bucket
            config = Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1},
                            max_pool_connections=gate.per_host, connect_timeout=connect,
                            read_timeout=read)
            self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1",
                                       config=config)

        def fetch(self, key, dest, seconds):
            with self.gate.slot(self.bucket_host):
                try:
                    answer = self.client.get_object(Bucket=self.bucket, Key=key)
                except ClientError as error:
                    raise src.status_error(error.response["ResponseMetadata"]["HTTPStatusCode"],
                                           "s3") from error
                except (BotoCoreError, *src.NETWORK_ERRORS) as error:
                    raise src.Transient(str(error)) from error
                raw = answer["Body"]._raw_stream
                try:
                    fetched = src.copy_body(raw.read1, dest, answer.get("ContentLength"),
                                            time.monotonic() + seconds, self.block)
                finally:
                    raw.release_conn()
            if answer.get("ETag", "").strip('"') != fetched.md5:
                raise src.Transient("bytes differ from the object")
            return fetched

    return Boto3Source


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
        if case == "boto3":
            from flows.openimages import downloader

            downloader.S3Source = boto3_source()
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


def measure(case: str, url: str, count: int, store: Path, server: int) -> dict:
    """Run a case in a child process, on a new store (kept: see the docstring); add the
    server's CPU meanwhile."""
    served = process_cpu(server)
    done = subprocess.run([sys.executable, __file__, "--case", case, "--url", url, "--count",
                           str(count), "--store", str(store)], capture_output=True, text=True,
                          check=True, timeout=3600)
    served = process_cpu(server) - served
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
    parser.add_argument("--quick", action="store_true", help="60 images, 1 round, 10 ms")
    parser.add_argument("--count", type=int, help="images per case and round")
    parser.add_argument("--rounds", type=int)
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
    rounds = args.rounds or (1 if args.quick else 3)
    latency = args.latency if args.latency is not None else (0.01 if args.quick else 0.05)
    workdir = Path(tempfile.mkdtemp(prefix="download-bench-", dir=args.workdir))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "tests.imageserver", "--latency",
                               str(latency), "--until-stdin-closes"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        url = server.stdout.readline().strip()
        print(f"{count} images of ~150 KB per case and round, {rounds} rounds, "
              f"{latency * 1e3:.0f} ms added latency, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f} at the start", flush=True)
        totals = {case: dict.fromkeys(("images", "ok", "seconds", "cpu", "server_cpu"), 0.0)
                  for case in CASES}
        plan = [("seed", min(count, 200))]
        for n in range(rounds):
            turn = n % len(ALTERNATED)
            plan += [(case, count) for case in ALTERNATED[turn:] + ALTERNATED[:turn]]
        for n, (case, images) in enumerate(plan):
            r = measure(case, url, images, workdir / f"{n:02d}-{case}", server.pid)
            for key in totals[case]:
                totals[case][key] += r[key]
            print(f"  {case}: {r['images'] / r['seconds']:.0f} images/s, "
                  f"{r['cpu'] / r['images'] * 1e3:.2f} ms CPU/image", file=sys.stderr, flush=True)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    for case, r in totals.items():
        print(f"download {case:>10}: {r['ok']:.0f}/{r['images']:.0f} images in "
              f"{r['seconds']:.1f} s, {r['images'] / r['seconds']:.0f} images/s, "
              f"{r['cpu'] / r['images'] * 1e3:.2f} ms CPU/image "
              f"(server {r['server_cpu'] / r['images'] * 1e3:.2f})", flush=True)
    from flows.openimages.downloader import DownloadOptions

    rate = {case: r["images"] / r["seconds"] for case, r in totals.items()}
    in_flight = DownloadOptions().workers
    bound = in_flight / latency
    print(f"ratios: openimager/seed {rate['openimager'] / rate['seed']:.1f}x (target >= 20x), "
          f"openimager/pool20 {rate['openimager'] / rate['pool20']:.1f}x (target >= 2x), "
          f"{rate['openimager'] / bound:.0%} of the concurrency bound {in_flight} in flight / "
          f"{latency * 1e3:.0f} ms = {bound:.0f} images/s (target >= 70%); "
          f"cvdf/pool20 {rate['cvdf'] / rate['pool20']:.1f}x, cvdf/boto3 "
          f"{rate['cvdf'] / rate['boto3']:.1f}x")
    cpu = {case: r["cpu"] / r["images"] for case, r in totals.items()}
    print(f"CPU per image: openimager (verified) / pool20 (unverified) "
          f"{cpu['openimager'] / cpu['pool20']:.2f}x (target <= 1), cvdf / pool20 "
          f"{cpu['cvdf'] / cpu['pool20']:.2f}x, cvdf plain GETs / through boto3 "
          f"{cpu['cvdf'] / cpu['boto3']:.2f}x")
    print(check_costs(12 if args.quick else 40))


if __name__ == "__main__":
    main()
