"""Selecting classes from Open Images metadata at full v6 train scale: pandas vs openimager.

Writes a synthetic box CSV (14,610,229 rows, the 21 published columns, sorted by ImageID, a
skewed class distribution over the 601 real boxable MIDs, the biggest class with about 2 M
boxes) and an image-info CSV (1,743,042 rows). Each case is a process of its own, measured
whole (interpreter start and imports included: what a user waits for): wall time, CPU time
and peak RSS.

- pandas2, pandasbig: the seed's way, pandas.read_csv of the whole box file, isin, merge with
  the image info; Hamburger + Sandwich, and the biggest class;
- duckdb: DuckDB reading the same two CSVs for the same two classes, the reference for what a
  full CSV parse can cost (`pip install duckdb`; without it the line says skipped);
- cold: `python -m flows select` of the two classes streamed from the CSVs (no cache);
- build: the cache build;
- warm2, warm20, warmbig: the selection from the cache: 2 classes, 20, the biggest class.

Each openimager selection is a whole `python -m flows select` command in a fresh process.

    python benchmarks/metadata.py              # full scale (about 2.3 GB of CSV in --workdir)
    python benchmarks/metadata.py --scale 0.25 # a quarter of it
    python benchmarks/metadata.py --quick      # 200,000 rows, for the test suite
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


def _popularity(rng, names: dict[str, str]) -> list[int]:
    """Indices of the sorted MIDs, from the class with the most boxes to the fewest."""
    mids = sorted(names)
    order = list(rng.permutation(len(mids)))
    # Zipf-like popularity; Hamburger and Sandwich sit mid-table as in the real data.
    by_name = {n: m for m, n in names.items()}
    for rank, name in ((150, "Hamburger"), (200, "Sandwich")):
        i = mids.index(by_name[name])
        j = order.index(i)
        order[j], order[rank] = order[rank], order[j]
    return order


def biggest_class(seed: int = 7) -> str:
    """The name of the class generate() gives the most boxes (about 14 % of them)."""
    import numpy as np

    from flows.openimages.ontology import read_class_descriptions

    names = read_class_descriptions(
        ROOT / "data" / "sample" / "openimages" / "v5" / "class-descriptions-boxable.csv")
    return names[sorted(names)[_popularity(np.random.default_rng(seed), names)[0]]]


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
    order = _popularity(rng, names)
    weights = 1.0 / (np.arange(len(mids)) + 1.0)
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


def select_argv(classes: list[str], workspace: Path) -> list[str]:
    """The command line that selects classes in a workspace, as a user types it."""
    return [sys.executable, "-m", "flows", "select", "--classes", *classes,
            "--workspace", str(workspace)]


def select_env(workspace: Path, cache: bool) -> dict[str, str]:
    """Settings of the benchmark's selections: the local files, the seed's filter (none)."""
    return {**os.environ, "OPENIMAGER_METADATA_URL": f"file://{workspace / 'metadata'}",
            "OPENIMAGER_CHECK_UPSTREAM": "false", "OPENIMAGER_SPLITS": '["train"]',
            "OPENIMAGER_METADATA_CACHE": str(cache).lower(),
            "OPENIMAGER_INCLUDE_SUBCLASSES": "false", "OPENIMAGER_DEPICTION": "any",
            "OPENIMAGER_GROUP_OF": "any", "QUILT_DISABLE_USAGE_METRICS": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def run_case(case: str, workspace: Path, classes: list[str]) -> int:
    """Run one in-process case (pandas, duckdb, the cache build); return its row count."""
    meta = workspace / "metadata"
    if case == "build":
        from flows.openimages.metadata import Metadata
        from flows.run.progress import stepper

        shutil.rmtree(meta / "cache", ignore_errors=True)
        Metadata(f"file://{meta}", meta, "v6", ("train",), check_upstream=False,
                 progress=stepper("metadata")).refresh()
        return 0
    from flows.openimages.ontology import read_class_descriptions

    by_name = {n: m for m, n in read_class_descriptions(
        meta / "v5/class-descriptions-boxable.csv").items()}
    mids = [by_name[n] for n in classes]
    if case == "duckdb":
        import duckdb

        query = ("SELECT count(*) FROM read_csv(?) b JOIN read_csv(?) i USING (ImageID) "
                 f"WHERE b.LabelName IN ({', '.join('?' * len(mids))})")
        found = duckdb.connect().execute(
            query, [str(meta / BOXES_PATH), str(meta / IMAGES_PATH), *mids])
        return found.fetchone()[0]
    import pandas as pd

    boxes = pd.read_csv(meta / BOXES_PATH)
    chosen = boxes[boxes.LabelName.isin(mids)]
    info = pd.read_csv(meta / IMAGES_PATH)
    return len(chosen.merge(info, on="ImageID"))


def measure(argv: list[str], env: dict[str, str] | None, log: Path) -> dict:
    """Run argv as a child process; its wall time, CPU time (user + system) and peak RSS."""
    start = time.perf_counter()
    with log.open("wb") as err:
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err)
        out = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(argv[1:4])} failed with status {status}:\n{tail}")
    return {"seconds": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024, "out": out}


def main() -> None:
    """Generate the files (once per size), run every case, print one line each and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200,000 rows, for tests")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full size")
    parser.add_argument("--rows", type=int, help="box rows (image rows scale with them)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "workspace" / "bench-metadata")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--classes", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    boxes = args.rows or (200_000 if args.quick else round(FULL_BOXES * args.scale))
    images = max(1000, round(boxes * FULL_IMAGES / FULL_BOXES))
    if args.case == "generate":
        generate(args.workdir / "metadata", boxes, images)
        return
    if args.case:
        print(json.dumps({"rows": run_case(args.case, args.workdir, args.classes)}))
        return
    workspace = args.workdir.resolve() / f"{boxes}"
    logs = workspace / "logs"
    if not (workspace / "metadata" / IMAGES_PATH).exists():
        # In a child: a child's peak RSS counts its parent's size at fork, so keep ours small.
        subprocess.run([sys.executable, __file__, "--case", "generate", "--rows", str(boxes),
                        "--workdir", str(workspace)], check=True)
    logs.mkdir(exist_ok=True)
    big = [biggest_class()]

    def inprocess(case: str, classes: list[str]) -> dict:
        argv = [sys.executable, __file__, "--case", case, "--workdir", str(workspace),
                "--classes", *classes]
        found = measure(argv, None, logs / f"{case}.log")
        return {**found, "rows": json.loads(found["out"])["rows"]}

    def command(case: str, classes: list[str], cache: bool) -> dict:
        found = measure(select_argv(classes, workspace), select_env(workspace, cache),
                        logs / f"{case}.log")
        kept = workspace / f"selection-{case}.parquet"
        os.replace(workspace / "selection.parquet", kept)
        return {**found, "file": kept}

    try:
        import duckdb  # noqa: F401  (only whether it is there: the case runs in a child)
        has_duckdb = True
    except ImportError:
        has_duckdb = False
    results = {"pandas2": inprocess("pandas2", TWO), "pandasbig": inprocess("pandasbig", big)}
    if has_duckdb:
        results["duckdb"] = inprocess("duckdb", TWO)
    shutil.rmtree(workspace / "metadata" / "cache", ignore_errors=True)
    results["cold"] = command("cold", TWO, cache=False)
    results["build"] = inprocess("build", TWO)
    results["warm2"] = command("warm2", TWO, cache=True)
    results["warm20"] = command("warm20", TWENTY, cache=True)
    results["warmbig"] = command("warmbig", big, cache=True)

    import pyarrow.parquet as pq  # only now: the children are done

    for r in results.values():
        if "file" in r:
            r["rows"] = pq.ParquetFile(r["file"]).metadata.num_rows
    print(f"metadata: {boxes:,} boxes, {images:,} images; biggest class {big[0]} "
          f"({results['warmbig']['rows']:,} boxes); selections run by python -m flows select")
    for case, r in results.items():
        print(f"metadata {case:>9}: {r['seconds']:7.2f} s  CPU {r['cpu']:7.2f} s  "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB  rows {r['rows']:,}")
    if not has_duckdb:
        print(f"metadata {'duckdb':>9}: skipped (duckdb is not installed: pip install duckdb)")
    pandas2, pandasbig = results["pandas2"], results["pandasbig"]
    cold, warm, warmbig = results["cold"], results["warm2"], results["warmbig"]
    two_rows = {r["rows"] for case, r in results.items() if case in
                ("pandas2", "duckdb", "cold", "warm2")}
    print(f"metadata goals: warm2 {warm['seconds']:.2f} s (<= 1.0) "
          f"{warm['peak_rss_mb']:.0f} MB (<= 300); "
          f"warm2/pandas wall {warm['seconds'] / pandas2['seconds']:.3f} (<= 0.05); "
          f"cold/pandas wall {cold['seconds'] / pandas2['seconds']:.2f} (<= 0.4) "
          f"{cold['peak_rss_mb']:.0f} MB (<= 400); "
          f"warmbig/pandas CPU {warmbig['cpu'] / pandasbig['cpu']:.3f} (<= 0.2) "
          f"{warmbig['peak_rss_mb']:.0f} MB (<= 1000); "
          f"build {results['build']['peak_rss_mb']:.0f} MB (<= 1200)")
    if has_duckdb:
        print(f"metadata reference: duckdb/pandas wall "
              f"{results['duckdb']['seconds'] / pandas2['seconds']:.2f}, "
              f"cold/duckdb wall {cold['seconds'] / results['duckdb']['seconds']:.2f}")
    equal = len(two_rows) == 1 and pandasbig["rows"] == warmbig["rows"]
    print(f"metadata ratios: rows equal {equal}, "
          f"warm2/pandas wall {warm['seconds'] / pandas2['seconds']:.3f}, "
          f"cold/pandas wall {cold['seconds'] / pandas2['seconds']:.2f}, "
          f"warmbig/pandas CPU {warmbig['cpu'] / pandasbig['cpu']:.3f}")

if __name__ == "__main__":
    main()
