"""Cropping speed per core: the seed's full decode and full-size save vs openimager's default.

Generates about 1,000 JPEG scenes of 1024 px with 1-4 boxes each (sides 20-90% of the
photo; once, in --workdir), then crops every box the seed's way (decode the whole image to a
numpy array, slice, save the slice at full size) and openimager's way (`crop_image` with its
defaults: 256 px crops, the JPEG decoder scaling the image down as far as every crop of it
allows, exact block averaging or area-averaged resizing, atomic writes), and prints crops per
second of CPU for each.

Each way runs in a fresh process of its own, the images already in the page cache, writing
into a new folder (as a first crop does); the ways take turns over --rounds rounds and the
median round of each is compared. One process for both would let the first way's memory use
and the allocator's state slow or speed the second: sharing a process moved the ratio by up
to a third here.

Crops go to a memory filesystem (/dev/shm where there is one; --out-root to choose), so that
the figures are the cropping's and not one disk's: on an ext4 without a journal, creating a
file skips every inode freed in the last minute or more (the kernel's recently_deleted), and
after a previous run's outputs were deleted that took 12-18 % of openimager's time, a cost
per file that both ways pay and that varies from run to run.

    python benchmarks/crop.py            # 1,000 images, 3 rounds
    python benchmarks/crop.py --quick    # 30 images, 1 round, for the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.openimages.crop import CropOptions, crop_image, records_by_image  # noqa: E402


def generate(workdir: Path, count: int, seed: int = 3) -> pd.DataFrame:
    """Write count scenes with boxes drawn in; return one row per box."""
    rng = np.random.default_rng(seed)
    rows = []
    workdir.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        image_id = f"{n:016x}"
        size = (1024, 768) if n % 2 else (768, 1024)
        noise = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        scene = Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(scene)
        for b in range(int(rng.integers(1, 5))):
            # Open Images boxes are often large: a fifth to most of the photo on a side.
            w, h = rng.uniform(0.2, 0.9, 2)
            x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            draw.ellipse([x0 * size[0], y0 * size[1], (x0 + w) * size[0], (y0 + h) * size[1]],
                         fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
            rows.append({"ImageID": image_id, "BoxID": f"{n}-{b}", "Class": "Thing",
                         "XMin": x0, "XMax": x0 + w, "YMin": y0, "YMax": y0 + h})
        scene.save(workdir / f"{image_id}.jpg", quality=90)
    table = pd.DataFrame(rows)
    table.to_parquet(workdir / "boxes.parquet")
    return table


def seed_way(path: Path, boxes: pd.DataFrame, out: Path) -> int:
    """Full decode to an array, slice, save at full size (the article's cropping)."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    height, width = pixels.shape[:2]
    for box in boxes.itertuples():
        part = pixels[int(box.YMin * height):int(box.YMax * height),
                      int(box.XMin * width):int(box.XMax * width)]
        Image.fromarray(part).save(out / f"{box.BoxID}.jpg")
    return len(boxes)


def one_way(name: str, images: Path, out: Path) -> dict:
    """Crop every box of the images one way, in this process; return crops and CPU seconds."""
    table = pd.read_parquet(images / "boxes.parquet")
    out.mkdir(parents=True)
    start, cpu = time.perf_counter(), time.process_time()
    crops = 0
    if name == "seed":
        for image_id, boxes in table.groupby("ImageID"):
            crops += seed_way(images / f"{image_id}.jpg", boxes, out)
    else:
        for image_id, records in records_by_image(table).items():
            rows = crop_image(images / f"{image_id}.jpg", 0.0, records, out, CropOptions())
            crops += sum(r["Status"] == "ok" for r in rows)
    return {"crops": crops, "images": int(table.ImageID.nunique()),
            "cpu": time.process_time() - cpu, "wall": time.perf_counter() - start}


def run(workdir: Path, count: int, rounds: int, out_root: Path) -> None:
    """Time both ways over the same images and print the lines and the ratio."""
    images = workdir / f"images-{count}"
    if not (images / "boxes.parquet").exists():
        generate(images, count)
    results: dict[str, list[dict]] = {"seed": [], "openimager": []}
    outputs = Path(tempfile.mkdtemp(prefix="openimager-crop-bench-", dir=out_root))
    try:
        for turn in range(rounds):
            for name in ("seed", "openimager") if turn % 2 == 0 else ("openimager", "seed"):
                for path in images.glob("*.jpg"):  # into the page cache: both ways read warm
                    path.read_bytes()
                done = subprocess.run([sys.executable, __file__, "--case", name, "--workdir",
                                       str(workdir), "--images", str(count),
                                       "--out", str(outputs / f"{name}-{turn}")],
                                      capture_output=True, text=True, check=True)
                results[name].append(json.loads(done.stdout))
    finally:
        shutil.rmtree(outputs, ignore_errors=True)
    speed = {}
    for name, runs in results.items():
        middle = sorted(runs, key=lambda r: r["crops"] / r["cpu"])[len(runs) // 2]
        speed[name] = middle["crops"] / middle["cpu"]
        every = ", ".join(f"{r['crops'] / r['cpu']:.1f}" for r in runs)
        print(f"crop {name:>10}: {speed[name]:7.1f} crops/s per core ({middle['crops']} crops "
              f"of {middle['images']} images, {middle['cpu']:.2f} s CPU, {middle['wall']:.2f} s "
              f"wall; median of {len(runs)} rounds: {every})")
    print(f"crop ratio openimager/seed per core: {speed['openimager'] / speed['seed']:.2f}")


def main() -> None:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 images, 1 round, for tests")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each way, taking turns")
    parser.add_argument("--workdir", type=Path, default=ROOT / "workspace" / "bench-crop")
    parser.add_argument("--out-root", type=Path, help="where the crops go (default: /dev/shm "
                        "if present, else the workdir)")
    parser.add_argument("--case", choices=["seed", "openimager"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    count = 30 if args.quick else args.images
    if args.case:  # one way, in a child process of run()
        print(json.dumps(one_way(args.case, args.workdir / f"images-{count}", args.out)))
        return
    shm = Path("/dev/shm")
    out_root = args.out_root or (shm if shm.is_dir() and os.access(shm, os.W_OK)
                                 else args.workdir)
    run(args.workdir, count, 1 if args.quick else args.rounds, out_root)


if __name__ == "__main__":
    main()
