"""Selecting classes from Open Images metadata at full v6 train scale: seed vs openimager.

Writes a synthetic box CSV (14,610,229 rows, the 21 published columns, sorted by ImageID, a
skewed class distribution over the 601 real boxable MIDs) and an image-info CSV (1,743,042
rows), then runs each case in its own child process and reports wall time and peak RSS:

- seed: pandas.read_csv of the whole box file, isin, merge with the image info;
- cold: openimager's first selection of Hamburger + Sandwich streamed from the CSVs;
- build: openimager's cache build;
- warm: the same selection from the cache, and a 20-class selection.

    python benchmarks/metadata.py            # full scale (about 2.3 GB of CSV in --workdir)
    python benchmarks/metadata.py --quick    # 200,000 rows, for the test suite
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FULL_BOXES, FULL_IMAGES = 14_610_229, 1_743_042
BOXES_PATH = "v6/oidv6-train-annotations-bbox.csv"
IMAGES_PATH = "2018_04/train/train-images-boxable-with-rotation.csv"
TWO = ["Hamburger", "Sandwich"]
TWENTY = ["Hamburger", "Sandwich", "Car", "Dog", "Cat", "Tomato", "Bicycle", "Chair", "Bird",
          "Boat", "Horse", "Pizza", "Apple", "Banana", "Airplane", "Bus", "Cake", "Coffee cup",
          "Truck", "Guitar"]


def _writer_md5(path: Path):
    digest = hashlib.md5()
    handle = path.open("wb")

    def write(data: bytes) -> None:
        digest.update(data)
        handle.write(data)

    return write, handle, digest


def generate(workdir: Path, boxes: int, images: int, seed: int = 7) -> None:
    """Write the synthetic CSVs and their verified-file stamps under workdir."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pv

    from flows.openimages.fetch import Stamp, stamp_path
    from flows.openimages.ontology import read_class_descriptions

    rng = np.random.default_rng(seed)
    meta = ROOT / "data" / "sample" / "openimages"
    for rel in ("v5/class-descriptions-boxable.csv", "2018_04/bbox_labels_600_hierarchy.json"):
        (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(meta / rel, workdir / rel)
    names = read_class_descriptions(meta / "v5/class-descriptions-boxable.csv")
    mids = sorted(names)
    # Zipf-like popularity; Hamburger and Sandwich sit mid-table as in the real data.
    order = list(rng.permutation(len(mids)))
    weights = 1.0 / (np.arange(len(mids)) + 1.0)
    by_name = {n: m for m, n in names.items()}
    for rank, name in ((150, "Hamburger"), (200, "Sandwich")):
        i = mids.index(by_name[name])
        j = order.index(i)
        order[j], order[rank] = order[rank], order[j]
    probs = np.empty(len(mids))
    probs[order] = weights / weights.sum()

    keys = np.unique(rng.integers(0, 2**63, size=images, dtype=np.int64))
    images = len(keys)
    ids = np.char.mod("%016x", keys.astype(object)).astype("U16")
    per_image = rng.multinomial(boxes - images, np.full(images, 1 / images)) + 1
    paths = {rel: workdir / rel for rel in (BOXES_PATH, IMAGES_PATH)}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)

    write, handle, digest = _writer_md5(paths[BOXES_PATH])
    starts = np.concatenate([[0], np.cumsum(per_image)])
    chunk_images = 100_000
    for first in range(0, images, chunk_images):
        last = min(images, first + chunk_images)
        counts = per_image[first:last]
        n = int(counts.sum())
        xmin, ymin = rng.random(n, dtype=np.float32) * 0.7, rng.random(n, dtype=np.float32) * 0.7
        xmax = xmin + 0.05 + rng.random(n, dtype=np.float32) * 0.25
        ymax = ymin + 0.05 + rng.random(n, dtype=np.float32) * 0.25
        flags = {c: rng.choice([-1, 0, 1], n, p=[0.05, 0.75, 0.2]).astype(np.int8)
                 for c in ("IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")}
        table = pa.table({
            "ImageID": np.repeat(ids[first:last], counts),
            "Source": np.where(rng.random(n) < 0.9, "xclick", "activemil"),
            "LabelName": np.asarray(mids)[rng.choice(len(mids), n, p=probs)],
            "Confidence": np.ones(n, dtype=np.int8),
            "XMin": xmin, "XMax": xmax, "YMin": ymin, "YMax": ymax, **flags,
            **{f"XClick{k}{a}": (xmin if a == "X" else ymin) for a in "XY" for k in range(1, 5)},
        })
        sink = pa.BufferOutputStream()
        if first == 0:  # pyarrow quotes header names; the published files do not
            write((",".join(table.column_names) + "\n").encode())
        pv.write_csv(table, sink, pv.WriteOptions(include_header=False, quoting_style="none"))
        write(sink.getvalue().to_pybytes())
        print(f"boxes: {starts[last]:,}/{boxes:,}", end="\r", file=sys.stderr)
    handle.close()
    box_md5 = digest.hexdigest()

    write, handle, digest = _writer_md5(paths[IMAGES_PATH])
    for first in range(0, images, 500_000):
        part = ids[first:first + 500_000]
        n = len(part)
        url = np.char.add(np.char.add("https://farm.example/", part), "_o.jpg")
        table = pa.table({
            "ImageID": part, "Subset": np.full(n, "train"), "OriginalURL": url,
            "OriginalLandingURL": np.char.add("https://www.example/photos/", part),
            "License": np.full(n, "https://creativecommons.org/licenses/by/2.0/"),
            "AuthorProfileURL": np.char.add("https://www.example/people/", part),
            "Author": np.char.add("Author ", part), "Title": np.char.add("Photo ", part),
            "OriginalSize": rng.integers(50_000, 5_000_000, n),
            "OriginalMD5": np.full(n, "KFukvivpCM5QXl5SqKe41g=="),
            "Thumbnail300KURL": np.char.add(np.char.add("https://c1.example/", part), "_z.jpg"),
            "Rotation": rng.choice([0.0, 90.0, 180.0, 270.0], n, p=[0.97, 0.01, 0.01, 0.01]),
        })
        sink = pa.BufferOutputStream()
        if first == 0:
            write((",".join(table.column_names) + "\n").encode())
        pv.write_csv(table, sink, pv.WriteOptions(include_header=False))
        write(sink.getvalue().to_pybytes())
    handle.close()
    for rel, md5 in ((BOXES_PATH, box_md5), (IMAGES_PATH, digest.hexdigest())):
        path = workdir / rel
        stamp = Stamp(url=f"file://{path}", size=path.stat().st_size, md5=md5)
        stamp_path(path).write_text(json.dumps(stamp.__dict__))
    print(file=sys.stderr)


def _store(workdir: Path, use_cache: bool):
    from flows.openimages.metadata import Metadata

    return Metadata(f"file://{workdir}", workdir, "v6", ("train",), check_upstream=False,
                    use_cache=use_cache)


def run_case(case: str, workdir: Path) -> dict:
    """Run one case in this process; return its result summary."""
    from flows.openimages.select import Filters, select_boxes

    # The seed filters nothing and knows no hierarchy.
    everything = Filters(include_subclasses=False, depiction="any", group_of="any")
    start = time.perf_counter()
    if case == "seed":
        import pandas as pd

        from flows.openimages.ontology import read_class_descriptions

        by_name = {n: m for m, n in read_class_descriptions(
            workdir / "v5/class-descriptions-boxable.csv").items()}
        boxes = pd.read_csv(workdir / BOXES_PATH)
        chosen = boxes[boxes.LabelName.isin([by_name[n] for n in TWO])]
        info = pd.read_csv(workdir / IMAGES_PATH)
        rows = len(chosen.merge(info, on="ImageID"))
    elif case == "build":
        shutil.rmtree(workdir / "cache", ignore_errors=True)
        _store(workdir, True).refresh()
        rows = 0
    else:
        store = _store(workdir, case != "cold").refresh()
        classes = TWENTY if case == "warm20" else TWO
        rows = len(select_boxes(store, store.ontology(), classes, everything))
    return {"case": case, "seconds": time.perf_counter() - start, "rows": rows}


def measure(case: str, workdir: Path) -> dict:
    """Run a case in a child process; add its peak RSS."""
    child = subprocess.Popen([sys.executable, __file__, "--case", case, "--workdir",
                              str(workdir)], stdout=subprocess.PIPE)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise RuntimeError(f"case {case} failed with status {status}")
    return {**json.loads(out), "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    """Generate the files (once per size) and print one line per case and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200,000 rows, for tests")
    parser.add_argument("--rows", type=int, help="box rows (image rows scale with them)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "workspace" / "bench-metadata")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    boxes = args.rows or (200_000 if args.quick else FULL_BOXES)
    images = max(1000, round(boxes * FULL_IMAGES / FULL_BOXES))
    if args.case == "generate":
        generate(args.workdir, boxes, images)
        return
    if args.case:
        print(json.dumps(run_case(args.case, args.workdir)))
        return
    workdir = args.workdir / f"{boxes}"
    if not (workdir / IMAGES_PATH).exists():
        # In a child: a child's peak RSS counts its parent's size at fork, so keep ours small.
        subprocess.run([sys.executable, __file__, "--case", "generate", "--rows", str(boxes),
                        "--workdir", str(workdir)], check=True)
    results = {case: measure(case, workdir)
               for case in ("seed", "cold", "build", "warm2", "warm20")}
    for r in results.values():
        print(f"metadata {r['case']:>6}: {r['seconds']:8.2f} s  peak RSS {r['peak_rss_mb']:7.0f} MB"
              f"  rows {r['rows']:,}  ({boxes:,} boxes, {images:,} images)")
    seed, cold, warm = results["seed"], results["cold"], results["warm2"]
    print(f"metadata ratios: cold/seed time {cold['seconds'] / seed['seconds']:.2f}, "
          f"cold/seed RSS {cold['peak_rss_mb'] / seed['peak_rss_mb']:.2f}, "
          f"warm/seed time {warm['seconds'] / seed['seconds']:.3f}, "
          f"rows equal {seed['rows'] == cold['rows'] == warm['rows']}")


if __name__ == "__main__":
    main()
