"""Checks for the committed synthetic Open Images mirror under data/sample."""

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
OI = SAMPLE / "openimages"
CAR = "/m/0k4j"
BOX_HEADER = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
              "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside", "XClick1X",
              "XClick2X", "XClick3X", "XClick4X", "XClick1Y", "XClick2Y", "XClick3Y", "XClick4Y"]
INFO_HEADER = ["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License",
               "AuthorProfileURL", "Author", "Title", "OriginalSize", "OriginalMD5",
               "Thumbnail300KURL", "Rotation"]
BOX_FILES = {"train": "v6/oidv6-train-annotations-bbox.csv",
             "validation": "v5/validation-annotations-bbox.csv",
             "test": "v5/test-annotations-bbox.csv"}
INFO_FILES = {"train": "2018_04/train/train-images-boxable-with-rotation.csv",
              "validation": "2018_04/validation/validation-images-with-rotation.csv",
              "test": "2018_04/test/test-images-with-rotation.csv"}


def sha256(path: Path) -> str:
    """Return the hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_rows(rel: str) -> list[dict[str, str]]:
    """Read one CSV under the openimages folder as dicts."""
    with (OI / rel).open(newline="") as fh:
        return list(csv.DictReader(fh))


def all_boxes() -> dict[str, list[dict[str, str]]]:
    """Return box rows of every subset grouped by ImageID."""
    grouped: dict[str, list[dict[str, str]]] = {}
    for rel in BOX_FILES.values():
        for row in read_rows(rel):
            grouped.setdefault(row["ImageID"], []).append(row)
    return grouped


def test_generator_reproduces_committed_files(tmp_path: Path) -> None:
    """Regenerating into a temp folder gives byte-identical files to the committed ones."""
    cmd = [sys.executable, str(SAMPLE / "generate.py"), "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, timeout=120)
    generated = {p.relative_to(tmp_path).as_posix(): p for p in tmp_path.rglob("*") if p.is_file()}
    assert len(generated) > 100
    for rel, path in sorted(generated.items()):
        assert (SAMPLE / rel).is_file(), f"{rel} is generated but not committed"
        assert sha256(path) == sha256(SAMPLE / rel), f"{rel} differs from the committed file"
    # stale images from an older run would silently enlarge the sample
    committed_images = {p.relative_to(SAMPLE).as_posix() for p in (SAMPLE / "images").rglob("*")
                        if p.is_file()}
    assert committed_images == {rel for rel in generated if rel.startswith("images/")}


def test_csv_headers_are_the_published_ones() -> None:
    """Box and image-info CSVs carry exactly the published Open Images headers."""
    for subset, rel in BOX_FILES.items():
        expected = BOX_HEADER if subset == "train" else BOX_HEADER[:13]
        with (OI / rel).open(newline="") as fh:
            assert next(csv.reader(fh)) == expected
    assert len(BOX_HEADER) == 21 and len(INFO_HEADER) == 12
    for rel in INFO_FILES.values():
        with (OI / rel).open(newline="") as fh:
            assert next(csv.reader(fh)) == INFO_HEADER


def test_boxes_are_normalised_and_ordered() -> None:
    """Every box lies in [0, 1] with min < max, and belongs to an image of its subset."""
    for subset, rel in BOX_FILES.items():
        ids = {row["ImageID"] for row in read_rows(INFO_FILES[subset])}
        rows = read_rows(rel)
        assert rows
        for row in rows:
            xmin, xmax, ymin, ymax = (float(row[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
            assert 0.0 <= xmin < xmax <= 1.0 and 0.0 <= ymin < ymax <= 1.0, row
            assert row["ImageID"] in ids


def test_rotation_must_be_applied_to_get_the_upright_scene() -> None:
    """Rotating stored images by Rotation gives the upright frame the car boxes refer to."""
    boxes = all_boxes()
    seen: dict[float, int] = {}
    for subset, rel in INFO_FILES.items():
        for info in read_rows(rel):
            if info["Rotation"] in ("", "0.0"):
                continue
            rotation = float(info["Rotation"])
            seen[rotation] = seen.get(rotation, 0) + 1
            stored = Image.open(SAMPLE / "images" / subset / f"{info['ImageID']}.jpg")
            stored = stored.convert("RGB")
            upright = stored.rotate(rotation, expand=True)
            assert upright.size in {(320, 240), (240, 320)}
            swapped = rotation in (90.0, 270.0)
            assert upright.size == (stored.size[::-1] if swapped else stored.size)
            cars = [b for b in boxes[info["ImageID"]] if b["LabelName"] == CAR]
            assert cars, "every rotated sample scene contains a car"
            for car in cars:
                rel_box = [float(car[k]) for k in ("XMin", "YMin", "XMax", "YMax")]
                w, h = upright.size
                box = (rel_box[0] * w, rel_box[1] * h, rel_box[2] * w, rel_box[3] * h)
                assert box[2] - box[0] > box[3] - box[1], "cars are wider than tall upright"
                sw, sh = stored.size
                wrong = (rel_box[0] * sw, rel_box[1] * sh, rel_box[2] * sw, rel_box[3] * sh)
                right_mean = np.asarray(upright.crop(box), dtype=float).mean(axis=(0, 1))
                wrong_mean = np.asarray(stored.crop(wrong), dtype=float).mean(axis=(0, 1))
                assert np.abs(right_mean - wrong_mean).max() > 3.0
    assert all(seen.get(r, 0) >= 2 for r in (90.0, 180.0, 270.0)), seen


def test_missing_images_have_rows_but_no_jpeg() -> None:
    """Two image ids mimic photos deleted upstream: rows exist, JPEGs do not."""
    boxes = all_boxes()
    readme = (SAMPLE / "README.md").read_text()
    missing = [info["ImageID"] for subset, rel in INFO_FILES.items() for info in read_rows(rel)
               if not (SAMPLE / "images" / subset / f"{info['ImageID']}.jpg").exists()]
    assert len(missing) == 2
    for image_id in missing:
        assert boxes[image_id] and image_id in readme


def test_sample_is_small() -> None:
    """The committed sample stays well under 10 MB."""
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 10 * 1024 * 1024
