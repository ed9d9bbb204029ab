"""Crop geometry (with Rotation), colour modes, and the split by source image."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.openimages.crop import CropOptions, crop_boxes, crop_image, pixel_box, upright
from flows.openimages.split import assign_splits


def quadrants(width: int = 80, height: int = 40) -> Image.Image:
    """An upright image whose four quadrants are red, green, blue and white."""
    image = Image.new("RGB", (width, height))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    for i, colour in enumerate(colours):
        x, y = (i % 2) * width // 2, (i // 2) * height // 2
        image.paste(colour, (x, y, x + width // 2, y + height // 2))
    return image


def boxes(*rows: tuple[float, float, float, float], cls: str = "Car") -> pd.DataFrame:
    return pd.DataFrame([{"BoxID": f"b{i}", "ImageID": "img", "Class": cls, "XMin": r[0],
                          "XMax": r[1], "YMin": r[2], "YMax": r[3]} for i, r in enumerate(rows)])


def test_pixel_box_maps_and_clips():
    assert pixel_box(100, 50, (0.1, 0.5, 0.2, 0.6)) == (10, 10, 50, 30)
    assert pixel_box(100, 50, (0.0, 1.0, 0.0, 1.0), padding=0.5) == (0, 0, 100, 50)


@pytest.mark.parametrize("rotation", [0.0, 90.0, 180.0, 270.0])
def test_rotation_is_applied_before_the_box(tmp_path, rotation):
    stored = quadrants().rotate(-rotation, expand=True)  # what the file on disk holds
    path = tmp_path / "img.jpg"
    stored.save(path, quality=95)
    # The top-left quadrant of the upright image is red whatever the stored orientation.
    rows = crop_image(path, rotation, boxes((0.05, 0.45, 0.05, 0.45)), tmp_path / "out",
                      CropOptions(size=64))
    assert rows[0]["Status"] == "ok"
    crop = np.asarray(Image.open(tmp_path / "out" / rows[0]["CropPath"]), dtype=float)
    assert crop.mean(axis=(0, 1)) == pytest.approx([255, 0, 0], abs=25)


def test_missing_rotation_falls_back_to_exif(tmp_path):
    image = quadrants()
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees
    path = tmp_path / "img.jpg"
    image.rotate(180).save(path, exif=exif)
    # pyarrow hands an empty Rotation over as a NaN of numpy's float32.
    for missing in (None, float("nan"), np.float32("nan")):
        assert upright(Image.open(path), missing).getpixel((5, 5))[0] > 200


def test_grayscale_and_palette_become_rgb_and_are_kept(tmp_path):
    for mode in ("L", "P", "CMYK"):
        path = tmp_path / f"{mode}.jpg" if mode != "P" else tmp_path / "p.png"
        quadrants().convert(mode).save(path)
        rows = crop_image(path, 0.0, boxes((0, 1, 0, 1)), tmp_path / mode, CropOptions())
        assert Image.open(tmp_path / mode / rows[0]["CropPath"]).mode == "RGB"


def test_tiny_and_unreadable_boxes_are_recorded_not_fatal(tmp_path):
    path = tmp_path / "img.jpg"
    quadrants().save(path)
    rows = crop_image(path, 0.0, boxes((0.1, 0.11, 0.1, 0.9)), tmp_path, CropOptions())
    assert rows[0]["Status"] == "too-small"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(path.read_bytes()[:100])
    rows = crop_image(broken, 0.0, boxes((0, 1, 0, 1)), tmp_path, CropOptions())
    assert rows[0]["Status"] == "unreadable" and rows[0]["Error"]


def test_crops_keep_aspect_within_the_longest_side(tmp_path):
    path = tmp_path / "img.jpg"
    quadrants(800, 400).save(path)
    rows = crop_image(path, 0.0, boxes((0, 1, 0, 1)), tmp_path, CropOptions(size=100))
    assert (rows[0]["Width"], rows[0]["Height"]) == (100, 50)


def test_splits_are_by_photo_stratified_and_seeded():
    rows = [{"ImageID": f"{i:016x}", "Class": c} for i in range(300)
            for c in (["Car"] if i % 3 else ["Car", "Hamburger"])]
    rows += [{"ImageID": f"{1000 + i:016x}", "Class": "Rare"} for i in range(4)]
    boxes = pd.DataFrame(rows)
    split = assign_splits(boxes, seed=0, validation=0.15, test=0.15)
    assert split.index.is_unique and set(split.index) == set(boxes.ImageID)
    per_class = boxes.drop_duplicates().assign(Split=boxes.ImageID.map(split))
    for name, group in per_class.groupby("Class"):
        shares = group.Split.value_counts(normalize=True)
        if name != "Rare":
            assert abs(shares["test"] - 0.15) < 0.05 and abs(shares["validation"] - 0.15) < 0.05
    rare = per_class[per_class.Class == "Rare"].Split.value_counts()
    assert rare["test"] >= 1 and rare["validation"] >= 1
    assert split.equals(assign_splits(boxes, seed=0, validation=0.15, test=0.15))
    assert not split.equals(assign_splits(boxes, seed=1, validation=0.15, test=0.15))


def test_draft_decoding_matches_the_slow_path(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    scene = Image.fromarray(base).resize((1024, 768), Image.Resampling.BICUBIC)
    path = tmp_path / "big.jpg"
    scene.save(path, quality=92)
    box = boxes((0.1, 0.8, 0.1, 0.9))
    fast = crop_image(path, 0.0, box, tmp_path / "fast", CropOptions(size=128))
    slow = crop_image(path, 0.0, box, tmp_path / "slow", CropOptions(size=128, draft=False))
    a = np.asarray(Image.open(tmp_path / "fast" / fast[0]["CropPath"]), dtype=float)
    b = np.asarray(Image.open(tmp_path / "slow" / slow[0]["CropPath"]), dtype=float)
    assert a.shape == b.shape
    # Bound: a mean absolute difference under 4 grey levels of 255 on this high-frequency
    # image (3.3 measured; smooth photos differ less).
    assert np.abs(a - b).mean() < 4.0


def test_a_rerun_crops_only_what_is_missing_or_changed(tmp_path):
    path = tmp_path / "img.jpg"
    quadrants(200, 100).save(path)
    manifest = pd.DataFrame([{"ImageID": "img", "Status": "ok", "Path": str(path),
                              "Bytes": path.stat().st_size}])
    selection = boxes((0, 0.5, 0, 0.5), (0.5, 1, 0.5, 1)).assign(Rotation=0.0)
    out = tmp_path / "crops"
    first = crop_boxes(selection, manifest, out, CropOptions(), workers=1)
    stamps = {p: (out / p).stat().st_mtime_ns for p in first.CropPath}
    saved = first.drop(columns=["Status", "Error"])  # as the crops table is written
    again = crop_boxes(selection, manifest, out, CropOptions(), workers=1, previous=saved)
    assert again.CropPath.tolist() == first.CropPath.tolist()
    assert {p: (out / p).stat().st_mtime_ns for p in again.CropPath} == stamps
    (out / first.CropPath[0]).unlink()
    changed = crop_boxes(selection, manifest, out, CropOptions(quality=70), workers=1,
                         previous=again.drop(columns=["Status", "Error"]))
    assert all((out / p).stat().st_mtime_ns != stamps.get(p) for p in changed.CropPath)


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os

    from flows.atomic import write_text

    write_text(tmp_path / "card.md", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "card.md").stat().st_mode & 0o777 == 0o666 & ~mask
