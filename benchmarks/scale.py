"""Scale: publishing and training input of sharded datasets against one file per crop.

For each size (4 k, 40 k and 400 k synthetic crops; `--quick`: 4 k) and each layout, in the
same run against a local S3 endpoint: the project's publish() of the dataset (first publish),
then of the dataset with 1 % more crops (+1 % publish), each with its wall time, bytes and
requests sent (botocore event hooks), the package manifest's size and entries, and the peak
memory of the publishing process (a fresh one each, under /usr/bin/time -v). Then the training
input's throughput (model.data.make_dataset, one pass that decodes and resizes) over the same
4,000 crops in both layouts, in the page cache and evicted from it first, in nine rounds (three
with --quick) that run the two layouts back to back (in turns first): shards over files within
each round, the median and range of that ratio, and the best rate of each. "files" is the
layout before shards (one S3 object and one manifest line per crop) published as before shards
too: every file checked and sent by quilt3 (the previous version's objects are not reused); it
runs up to --files-max crops.

Crops are real JPEGs cut from the sample's photos (a pool of 200, longest side 256 px, quality
90), each made unique by a counter after its end-of-image marker (decoders ignore it), so no
two crops share a hash. Shards hold 1,000 crops, as a crop chunk of 500 photos gives.

    python benchmarks/scale.py            # 4 k, 40 k, 400 k; files up to 40 k
    python benchmarks/scale.py --quick    # 4 k only, for the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.publish import META, Counter  # noqa: E402
from flows.servers.local import LOCAL_CREDENTIALS, TELEMETRY_OFF, LocalS3  # noqa: E402

PER_SHARD = 1000
POOL = 200
CLASSES = ["Car", "Bus", "Truck", "Van"]


def pool() -> list[bytes]:
    """POOL real JPEG crops of the sample's photos."""
    import io

    from PIL import Image

    photos = sorted((ROOT / "data" / "sample" / "images").rglob("*.jpg"))
    crops = []
    for i in range(POOL):
        with Image.open(photos[i % len(photos)]) as photo:
            w, h = photo.size
            box = (i % 7 * w // 20, i % 5 * h // 20, w - i % 3 * w // 20, h - i % 4 * h // 20)
            crop = photo.convert("RGB").crop(box)
        crop.thumbnail((256, 256))
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=90)
        crops.append(buffer.getvalue())
    return crops


def rows(start: int, count: int) -> list[dict]:
    """Crops table rows of crops start..start+count (two boxes a photo)."""
    return [{"CropPath": f"{CLASSES[i % 4]}/{i // 2:08x}_{i:08x}.jpg", "Class": CLASSES[i % 4],
             "ClassMID": f"/m/{i % 4}", "ImageID": f"{i // 2:016x}", "BoxID": f"{i:016x}",
             "Split": "test" if i % 20 < 3 else "validation" if i % 20 < 6 else "train",
             "XMin": 0.1, "XMax": 0.9, "YMin": 0.2, "YMax": 0.8, "Width": 256, "Height": 192,
             "Author": f"author {i % 997}", "License": "https://creativecommons.org/licenses/by/2.0/",
             "OriginalLandingURL": f"https://www.flickr.com/photos/x/{i // 2}",
             "CropKey": "k"} for i in range(start, start + count)]


def crop(images: list[bytes], i: int) -> bytes:
    """Crop i: a pool JPEG with i after its end (a distinct hash, the same pixels)."""
    return images[i % POOL] + i.to_bytes(8, "big")


def add(data: Path, layout: str, start: int, count: int, images: list[bytes]) -> None:
    """Add crops start..start+count to a dataset folder of the layout, tables rewritten."""
    import pandas as pd

    from flows.openimages.dataset import SKIPPED_COLUMNS, SKIPPED_TABLE
    from flows.openimages.shards import shard_bytes, write_shard

    new = rows(start, count)
    table_path = data / "crops.parquet"
    old = pd.read_parquet(table_path) if table_path.exists() else pd.DataFrame()
    if layout == "files":
        for row, i in zip(new, range(start, start + count), strict=True):
            (data / "crops" / row["CropPath"]).parent.mkdir(parents=True, exist_ok=True)
            (data / "crops" / row["CropPath"]).write_bytes(crop(images, i))
    else:
        for first in range(0, count, PER_SHARD):
            part = new[first:first + PER_SHARD]
            name = write_shard(data / "shards", shard_bytes(
                part, [crop(images, start + first + n) for n in range(len(part))]))
            for n, row in enumerate(part):
                row.update(Shard=name, Row=n)
    table = pd.concat([old, pd.DataFrame(new)], ignore_index=True)
    table.to_parquet(table_path, index=False)
    # No box is skipped: the table is empty, the same file as build_dataset writes.
    pd.DataFrame(columns=SKIPPED_COLUMNS).astype("string").to_parquet(data / SKIPPED_TABLE,
                                                                       index=False)


def publish_child(data: Path, model: Path, message: str) -> None:
    """In a fresh process: one publish, its numbers as a JSON line."""
    os.environ.update(TELEMETRY_OFF)
    counter = Counter()
    counter.install()
    import boto3

    from flows.publishing import bundle
    from flows.publishing.bundle import publish
    from flows.publishing.lineage import git_commit

    if not (data / "shards").exists():  # the layout before shards, published as it was
        bundle.reuse_unchanged = lambda package, previous: 0

    start = time.perf_counter()
    done = publish(data, model, {**META, "git_commit": git_commit()}, "bench/scale",
                   "s3://bench", message)
    seconds = time.perf_counter() - start
    sent, requests = counter.bytes, counter.requests  # not the manifest read below
    manifest = boto3.client("s3").get_object(Bucket="bench",
                                             Key=f".quilt/packages/{done.top_hash}")["Body"]
    text = manifest.read()
    print(json.dumps({"seconds": seconds, "bytes": sent, "requests": requests,
                      "manifest_bytes": len(text), "entries": text.count(b"\n") - 1}))


def publish_run(data: Path, model: Path, message: str, env: dict) -> dict:
    """publish_child under /usr/bin/time -v; its numbers with the peak memory."""
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, __file__, "--publish-child",
                           str(data), str(model), message], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"publish child failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return {**result, "peak_mb": int(peak.group(1)) / 1024 if peak else float("nan")}


def throughput(folders: dict[str, Path], count: int,
               rounds: int = 9, size: int = 128) -> list[dict[str, tuple[float, float]]]:
    """Crops per wall second and per CPU second of one decoding pass of make_dataset over the
    first count crops of each layout, for each of rounds rounds: "<layout>" with its files in
    the page cache, "<layout> cold" with them evicted first (a dataset larger than memory, as
    every first epoch at the whole of Open Images' 150 GB)."""
    import pandas as pd

    from model.data import make_dataset

    tables = {layout: pd.read_parquet(data / "crops.parquet").head(count)
              for layout, data in folders.items()}
    measured = []
    for number in range(rounds):
        this: dict[str, tuple[float, float]] = {}
        for cold in (False, True):
            for layout, data in sorted(folders.items(), reverse=number % 2 == 1):
                root = data / ("shards" if layout == "shards" else "crops")
                dataset = make_dataset(tables[layout], root, CLASSES, size, 64, training=False)
                if cold:
                    evict(root)
                start, cpu = time.perf_counter(), sum(os.times()[:2])
                for _batch in dataset:
                    pass
                wall, used = time.perf_counter() - start, sum(os.times()[:2]) - cpu
                this[layout + (" cold" if cold else "")] = (count / wall, count / used)
        measured.append(this)
    return measured


def evict(folder: Path) -> None:
    """Drop a folder's files from the page cache (written back first), so the next read
    comes from the disk."""
    os.sync()
    for path in folder.rglob("*"):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def paired(measured: list[dict[str, tuple[float, float]]], which: int, cold: str = "") -> str:
    """Shards over files within each round (the two ran back to back, so the machine's
    other load bears on both): the median ratio and its range over the rounds."""
    ratios = sorted(r["shards" + cold][which] / r["files" + cold][which] for r in measured)
    return f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def measure(size: int, layout: str, data: Path, images: list[bytes]) -> dict:
    """First and +1 % publish of a dataset of the layout against a fresh S3 endpoint."""
    with LocalS3() as s3:
        s3.create_bucket("bench")
        env = {**os.environ, "AWS_ENDPOINT_URL": s3.endpoint_url}
        model = data.parent / f"model-{layout}"
        data.mkdir()
        model.mkdir()
        (model / "model.keras").write_bytes(os.urandom(2_000_000))
        (model / "metrics.json").write_text(json.dumps(META["metrics"]))
        add(data, layout, 0, size, images)
        first = publish_run(data, model, "first", env)
        print(line(size, layout, "first publish", first), flush=True)
        add(data, layout, size, size // 100, images)
        more = publish_run(data, model, "+1 %", env)
        print(line(size, layout, "+1 % publish", more), flush=True)
        print(f"scale {size:>7} {layout:>6} +1 % / first: bytes "
              f"{more['bytes'] / first['bytes']:.3f}, requests "
              f"{more['requests'] / first['requests']:.3f} (target <= 0.05)", flush=True)
    return first


def line(size: int, layout: str, case: str, r: dict) -> str:
    """One printed result."""
    return (f"scale {size:>7} {layout:>6} {case:>13}: {r['seconds']:8.2f} s "
            f"{r['seconds'] / size * 1000:7.3f} ms/crop {r['bytes'] / 1e6:9.1f} MB "
            f"{r['requests']:7d} requests  manifest {r['manifest_bytes'] / 1e3:8.1f} kB "
            f"{r['entries']:6d} entries  peak {r['peak_mb']:7.0f} MB")


def main(argv: list[str] | None = None) -> int:
    """Run every size and layout; print one line per publish, throughput and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 k crops only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 40000, 400000])
    parser.add_argument("--files-max", type=int, default=40000)
    parser.add_argument("--train-crops", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=9,
                        help="rounds of the training-input passes (--quick: 3)")
    parser.add_argument("--publish-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publish_child:
        publish_child(Path(args.publish_child[0]), Path(args.publish_child[1]),
                      args.publish_child[2])
        return 0
    sizes = [4000] if args.quick else args.sizes
    os.environ.update(TELEMETRY_OFF, **LOCAL_CREDENTIALS, TF_CPP_MIN_LOG_LEVEL="2")
    images = pool()
    print(f"crops of {sum(map(len, images)) / len(images) / 1e3:.1f} kB on average, "
          f"{PER_SHARD} a shard", flush=True)
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="openimager-scale-") as tmp:
            layouts = ("shards", "files") if size <= args.files_max else ("shards",)
            folders = {layout: Path(tmp) / layout for layout in layouts}
            first = {layout: measure(size, layout, data, images)
                     for layout, data in folders.items()}
            measured = throughput(folders, min(size, args.train_crops),
                                  rounds=3 if args.quick else args.rounds)
        for layout in measured[0]:
            wall = max(r[layout][0] for r in measured)
            cpu = max(r[layout][1] for r in measured)
            print(f"scale {size:>7} {layout:>11} training input: {wall:8.1f} crops/s "
                  f"{cpu:8.1f} per CPU s (best of {len(measured)} rounds; decode and resize "
                  f"to 128 px, {min(size, args.train_crops)} crops)", flush=True)
        if "files" in first:
            per_crop = first["shards"]["seconds"] / first["files"]["seconds"]
            print(f"scale {size:>7} shards/files: first publish time per crop {per_crop:.3f} "
                  "(target <= 0.3)", flush=True)
            for cold, where in (("", "in the page cache"), (" cold", "from the disk")):
                print(f"scale {size:>7} shards/files: training input {where}, paired by round, "
                      f"median (range): wall {paired(measured, 0, cold)}, CPU "
                      f"{paired(measured, 1, cold)} (target >= 1.0)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
