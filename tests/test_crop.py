"""Crop geometry (with Rotation), colour modes, and the split by source image."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.openimages.crop import CropOptions, assign_split, crop_image, pixel_box, upright


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


def test_split_is_by_image_seeded_and_stable():
    ids = pd.Series([f"{i:016x}" for i in range(2000)])
    split = assign_split(ids, seed=0, validation=0.15, test=0.15)
    assert set(split) == {"train", "validation", "test"}
    assert 0.1 < (split == "test").mean() < 0.2
    assert split.equals(assign_split(ids, seed=0, validation=0.15, test=0.15))
    assert not split.equals(assign_split(ids, seed=1, validation=0.15, test=0.15))
    # Growing the data never moves an image to another split.
    grown = assign_split(pd.concat([ids, pd.Series(["ffff"] * 3)]), 0, 0.15, 0.15)
    assert grown.iloc[:2000].equals(split)
