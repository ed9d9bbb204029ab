"""Cropping speed per core: the seed's full decode and full-size save vs openimager's default.

Generates about 1,000 JPEG scenes of 1024 px with 1-4 boxes each (sides 20-90% of the
photo; once, in --workdir), then in one process crops every box the seed's way (decode the
whole image to a numpy array, slice, save the slice at full size) and openimager's way
(`crop_image` with its defaults: 256 px crops, the JPEG decoder scaling the image down as far
as every crop of it allows, area-averaged shrinking, atomic writes), and prints crops per
second of CPU for each. Both write into emptied folders, as a first crop does: rewriting the
previous run's files in place costs a filesystem less than creating them, so a rerun would
otherwise flatter the seed's plain writes against openimager's temp-file-and-rename.

    python benchmarks/crop.py            # 1,000 images
    python benchmarks/crop.py --quick    # 30 images, for the test suite
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.openimages.crop import CropOptions, crop_image  # noqa: E402


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


def run(workdir: Path, count: int) -> None:
    """Time both ways over the same images and print the lines and the ratio."""
    images = workdir / f"images-{count}"
    table = (pd.read_parquet(images / "boxes.parquet") if (images / "boxes.parquet").exists()
             else generate(images, count))
    groups = list(table.groupby("ImageID"))
    results = {}
    for name in ("seed", "openimager"):
        out = workdir / f"out-{name}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        start, cpu = time.perf_counter(), time.process_time()
        crops = 0
        for image_id, boxes in groups:
            path = images / f"{image_id}.jpg"
            if name == "seed":
                crops += seed_way(path, boxes, out)
            else:
                crops += sum(r["Status"] == "ok"
                             for r in crop_image(path, 0.0, boxes, out, CropOptions()))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        results[name] = crops / cpu
        print(f"crop {name:>10}: {crops / cpu:7.1f} crops/s per core ({crops} crops of "
              f"{len(groups)} images, {wall:.2f} s wall, {cpu:.2f} s CPU)")
    print(f"crop ratio openimager/seed per core: {results['openimager'] / results['seed']:.2f}")


def main() -> None:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 images, for tests")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=ROOT / "workspace" / "bench-crop")
    args = parser.parse_args()
    run(args.workdir, 30 if args.quick else args.images)


if __name__ == "__main__":
    main()
