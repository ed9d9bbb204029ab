"""Crop geometry (with Rotation), colour modes, and the split by source image."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.openimages.crop import (
    CropOptions,
    _fit,
    box_records,
    crop_image,
    crop_window,
    draft_size,
    pixel_box,
    upright,
)
from flows.openimages.split import assign_splits


def quadrants(width: int = 80, height: int = 40) -> Image.Image:
    """An upright image whose four quadrants are red, green, blue and white."""
    image = Image.new("RGB", (width, height))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    for i, colour in enumerate(colours):
        x, y = (i % 2) * width // 2, (i // 2) * height // 2
        image.paste(colour, (x, y, x + width // 2, y + height // 2))
    return image


def boxes(*rows: tuple[float, float, float, float], cls: str = "Car") -> list[tuple]:
    return box_records(pd.DataFrame([
        {"BoxID": f"b{i}", "ImageID": "img", "Class": cls, "XMin": r[0], "XMax": r[1],
         "YMin": r[2], "YMax": r[3]} for i, r in enumerate(rows)]))


def test_pixel_box_maps_and_clips():
    assert pixel_box(100, 50, (0.1, 0.5, 0.2, 0.6)) == (10, 10, 50, 30)
    assert pixel_box(100, 50, (0.0, 1.0, 0.0, 1.0), padding=0.5) == (0, 0, 100, 50)


@pytest.mark.parametrize("rotation", [0.0, 90.0, 180.0, 270.0])
def test_rotation_is_applied_before_the_box(tmp_path, rotation):
    # Big enough that the box is over the default minimum box size.
    stored = quadrants(200, 100).rotate(-rotation, expand=True)  # what the file on disk holds
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


def test_splits_are_by_photo_seeded_and_near_the_fractions():
    rows = [{"ImageID": f"{i:016x}", "Class": c} for i in range(600)
            for c in (["Car"] if i % 3 else ["Car", "Hamburger"])]
    boxes = pd.DataFrame(rows)
    split = assign_splits(boxes, seed=0, validation=0.15, test=0.15)
    assert split.index.is_unique and set(split.index) == set(boxes.ImageID)
    per_class = boxes.drop_duplicates().assign(Split=boxes.ImageID.map(split))
    for _, group in per_class.groupby("Class"):
        shares = group.Split.value_counts(normalize=True)
        assert abs(shares["test"] - 0.15) < 0.06 and abs(shares["validation"] - 0.15) < 0.06
    assert split.equals(assign_splits(boxes, seed=0, validation=0.15, test=0.15))
    assert not split.equals(assign_splits(boxes, seed=1, validation=0.15, test=0.15))


def test_growing_the_dataset_moves_no_photo():
    def boxes(n: int, classes: tuple[str, ...]) -> pd.DataFrame:
        return pd.DataFrame([{"ImageID": f"{i:016x}", "Class": classes[i % len(classes)]}
                             for i in range(n)])

    before = assign_splits(boxes(500, ("Car",)), seed=3, validation=0.15, test=0.15)
    # More photos, and a new class that makes some old photos' classes rarer by comparison.
    grown = pd.concat([boxes(500, ("Car",)), boxes(5000, ("Car", "Rare", "Bus")).iloc[500:]])
    after = assign_splits(grown.sample(frac=1, random_state=1), seed=3, validation=0.15,
                          test=0.15)
    assert after[before.index].equals(before)


def test_draft_decoding_matches_the_slow_path(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    scene = Image.fromarray(base).resize((1024, 768), Image.Resampling.BICUBIC)
    path = tmp_path / "big.jpg"
    scene.save(path, quality=92)
    box = boxes((0.1, 0.8, 0.1, 0.9))
    # min_detail 1.0: both crops at the box's exact thumbnail size, one from a 1/4 decode.
    fast = crop_image(path, 0.0, box, tmp_path / "fast", CropOptions(size=128, min_detail=1.0))
    slow = crop_image(path, 0.0, box, tmp_path / "slow",
                      CropOptions(size=128, draft=False, min_detail=1.0))
    a = np.asarray(Image.open(tmp_path / "fast" / fast[0]["CropPath"]), dtype=float)
    b = np.asarray(Image.open(tmp_path / "slow" / slow[0]["CropPath"]), dtype=float)
    assert a.shape == b.shape
    # Bound: a mean absolute difference under 4 grey levels of 255 on this high-frequency
    # image (3.4 measured with BOX shrinking, 3.3 with LANCZOS; smooth photos differ less).
    assert np.abs(a - b).mean() < 4.0


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os

    from model.atomic import write_text

    write_text(tmp_path / "card.md", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "card.md").stat().st_mode & 0o777 == 0o666 & ~mask


def noise_scene(path, cells: int = 32, size: tuple[int, int] = (1024, 768)):
    """A JPEG of smoothed noise: detail everywhere, features about 1024/cells pixels wide."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (cells, cells, 3), dtype=np.uint8)
    Image.fromarray(base).resize(size, Image.Resampling.BICUBIC).save(path, quality=92)
    return path


def lanczos_reference(path, box, size: int | tuple[int, int], quality: int = 90,
                      region: tuple[float, ...] | None = None) -> np.ndarray:
    """The slow path spelled out: full decode, crop, LANCZOS to size (a thumbnail's longest
    side, or the exact width and height of a stored-pixel region), same JPEG quality."""
    full = Image.open(path).convert("RGB")
    if region is not None:
        crop = full.resize(size, Image.Resampling.LANCZOS, box=region)
    else:
        crop = full.crop(pixel_box(*full.size, box))
        crop.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = path.with_name("reference.jpg")
    crop.save(out, quality=quality)
    return np.asarray(Image.open(out), dtype=float)


def drafted_scales(monkeypatch) -> list[float]:
    """Record the scale of every JPEG decode that crop_image shrinks (DCT scaling)."""
    from PIL import JpegImagePlugin

    scales: list[float] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        width = self.size[0]
        result = draft(self, mode, size)
        scales.append(result[1][2] / width if result else 1.0)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return scales


def test_crop_sizes_are_what_thumbnail_gives():
    lengths = sorted({*range(1, 900, 29), 32, 33, 34, 99, 100, 101, 255, 256, 257})
    for size in (256, 100, 33):
        for width in lengths:
            for height in lengths:
                image = Image.new("L", (width, height))
                image.thumbnail((size, size))
                assert _fit(width, height, size) == image.size


def test_decode_scale_keeps_the_promised_detail(tmp_path):
    """Every crop gets at least min_detail of its pixels from the decode; a box smaller than
    size is never decoded smaller; and the decode is as small as that allows."""
    path = noise_scene(tmp_path / "big.jpg")
    rng = np.random.default_rng(1)
    for min_detail in (1.0, 0.75):
        options = CropOptions(min_detail=min_detail)
        for _ in range(300):
            longest = [int(n) for n in rng.integers(1, 1024, int(rng.integers(1, 5)))]
            request = draft_size((1024, 768), longest, options)
            with Image.open(path) as image:
                drafted = image.draft(None, request) if request else None
            scale = drafted[1][2] / 1024 if drafted else 1.0
            for n in longest:
                assert n * scale >= min_detail * min(n, options.size) - 1e-9
                if n < options.size:
                    assert scale == 1.0
            # Optimal: half the scale would break the promise for some box.
            if scale > 1 / 8:
                assert any(n * scale / 2 < min_detail * min(n, options.size) for n in longest)


def test_a_small_box_keeps_full_resolution_beside_big_ones(tmp_path, monkeypatch):
    path = noise_scene(tmp_path / "big.jpg", cells=128)
    scales = drafted_scales(monkeypatch)
    big = boxes((0.0, 1.0, 0.0, 1.0), (0.1, 0.9, 0.1, 0.9))
    crop_image(path, 0.0, big, tmp_path / "big", CropOptions())
    assert scales == [0.25]  # big boxes alone (820 px and up): decoded at a quarter
    scales.clear()
    mixed = boxes((0.0, 1.0, 0.0, 1.0), (0.3, 0.45, 0.3, 0.5))  # 154 x 154 px, below 256
    fast = crop_image(path, 0.0, mixed, tmp_path / "fast", CropOptions())
    assert scales == []  # the small box asks for every stored pixel
    slow = crop_image(path, 0.0, mixed, tmp_path / "slow", CropOptions(draft=False))
    small = [np.asarray(Image.open(tmp_path / d / r[1]["CropPath"]))
             for d, r in (("fast", fast), ("slow", slow))]
    assert small[0].shape == (154, 154, 3) and np.array_equal(*small)


@pytest.mark.parametrize(("box", "options", "scale", "shape", "bound"), [
    # A big shrink on a DCT-scaled decode (1/4), resampled: 3.1 measured (LANCZOS code: 3.3).
    ((0.1, 0.8, 0.1, 0.9), CropOptions(size=128, min_detail=1.0), 0.25, (110, 128), 4.0),
    # 410 px box, 256 px crop: a full decode shrunk by BOX, 1.1 measured.
    ((0.1, 0.5, 0.1, 0.5), CropOptions(min_detail=1.0), 1.0, (192, 256), 1.5),
    # The same box decoded at 1/2 and cut out as it is: 205 x 154 px, 0.8 of the crop size;
    # 0.95 measured.
    ((0.1, 0.5, 0.1, 0.5), CropOptions(), 0.5, (154, 205), 1.5),
    # 718 x 616 px trimmed to 717 x 615 and averaged over 3 x 3 blocks (Image.reduce): 1.07
    # measured (4.8 untrimmed, the last block partial and the crop shifted against the box).
    ((0.1, 0.8, 0.1, 0.9), CropOptions(draft=False), 1.0, (205, 239), 1.5),
])
def test_fast_crops_stay_close_to_the_slow_lanczos_path(tmp_path, monkeypatch, box, options,
                                                        scale, shape, bound):
    path = noise_scene(tmp_path / "big.jpg")
    scales = drafted_scales(monkeypatch)
    rows = crop_image(path, 0.0, boxes(box), tmp_path / "out", options)
    assert scales == ([scale] if scale < 1 else [])
    fast = np.asarray(Image.open(tmp_path / "out" / rows[0]["CropPath"]), dtype=float)
    assert fast.shape[:2] == shape
    window = crop_window(pixel_box(1024, 768, box), scale,
                         (round(1024 * scale), round(768 * scale)), options)
    if window is None:  # resampled: exactly the slow path's thumbnail of the box
        slow = lanczos_reference(path, box, options.size)
    else:  # the same window, taken from a full decode and resampled with LANCZOS
        region = tuple(edge / scale for edge in window[0])
        slow = lanczos_reference(path, box, (shape[1], shape[0]), region=region)
    assert fast.shape == slow.shape
    # Mean absolute difference in grey levels of 255, JPEG noise of both sides included.
    assert np.abs(fast - slow).mean() < bound


def test_crop_sizes_keep_min_detail_and_never_exceed_size(tmp_path):
    """Whatever path a crop takes (cut, k x k average, resample), its longest side lies in
    [min_detail, 1] x min(box, size), its aspect is the box's, and min_detail 1.0 gives
    exactly the box's thumbnail size."""
    path = noise_scene(tmp_path / "big.jpg")
    rng = np.random.default_rng(2)
    for min_detail in (1.0, 0.75, 0.55):
        options = CropOptions(min_detail=min_detail)
        for trial in range(40):
            rows = [sorted(rng.uniform(0, 1, 2)) + sorted(rng.uniform(0, 1, 2))
                    for _ in range(int(rng.integers(1, 5)))]
            records = boxes(*[(a, b, c, d) for a, b, c, d in rows])
            out = tmp_path / f"{min_detail}-{trial}"
            for row, (a, b, c, d) in zip(crop_image(path, 0.0, records, out, options), rows,
                                         strict=True):
                left, top, right, bottom = pixel_box(1024, 768, (a, b, c, d))
                if min(right - left, bottom - top) < options.min_pixels:
                    assert row["Status"] == "too-small"
                    continue
                width, height = Image.open(out / row["CropPath"]).size
                assert (width, height) == (row["Width"], row["Height"])
                exact = _fit(right - left, bottom - top, options.size)
                if min_detail == 1.0:
                    assert (width, height) == exact
                    continue
                assert min_detail * max(exact) <= max(width, height) <= max(exact)
                scale = max(width, height) / max(exact)
                assert abs(min(width, height) - min(exact) * scale) <= 2


def test_a_crop_window_stays_on_its_box():
    """A window cut or averaged from a decode lies inside the box's pixels on that decode,
    trimmed by less than one k x k block, and is tiled by whole blocks."""
    rng = np.random.default_rng(3)
    options = CropOptions(min_pixels=8)  # small boxes too: the geometry holds for any box
    checked = 0
    for _ in range(2000):
        scale = float(rng.choice([1.0, 0.5, 0.25, 0.125]))
        left, right = sorted(int(v) for v in rng.integers(0, 1024, 2))
        top, bottom = sorted(int(v) for v in rng.integers(0, 768, 2))
        if min(right - left, bottom - top) < options.min_pixels:
            continue
        decoded = (-(-1024 * scale // 1), -(-768 * scale // 1))
        window = crop_window((left, top, right, bottom), scale, tuple(map(int, decoded)), options)
        if window is None:
            continue
        (x0, y0, x1, y1), k = window
        checked += 1
        assert (x1 - x0) % k == 0 and (y1 - y0) % k == 0
        for inner, outer in ((x0, left), (y0, top)):
            assert 0 <= inner - round(outer * scale) < k
        for inner, outer in ((x1, right), (y1, bottom)):
            assert 0 <= round(outer * scale) - inner < k
    assert checked > 500


@pytest.mark.parametrize("rotation", [0.0, 90.0, 180.0, 270.0, None])
def test_rotation_and_exif_hold_on_a_downscaled_decode(tmp_path, monkeypatch, rotation):
    scales = drafted_scales(monkeypatch)
    path = tmp_path / "img.jpg"
    if rotation is None:  # EXIF 6: the stored image must be turned 270 degrees to stand up
        exif = Image.Exif()
        exif[0x0112] = 6
        quadrants(1024, 512).rotate(90, expand=True).save(path, exif=exif, quality=95)
    else:
        quadrants(1024, 512).rotate(-rotation, expand=True).save(path, quality=95)
    rows = crop_image(path, rotation, boxes((0.05, 0.45, 0.05, 0.45), (0.55, 0.95, 0.55, 0.95)),
                      tmp_path / "out", CropOptions(size=64))
    assert scales == [0.125]
    colours = [np.asarray(Image.open(tmp_path / "out" / r["CropPath"]), dtype=float)
               for r in rows]
    # 410 x 206 px boxes, cut from the 1/8 decode as they are: 0.81 of the 64 px size.
    assert [(r["Width"], r["Height"]) for r in rows] == [(52, 26), (52, 26)]
    assert colours[0].mean(axis=(0, 1)) == pytest.approx([255, 0, 0], abs=25)
    assert colours[1].mean(axis=(0, 1)) == pytest.approx([255, 255, 255], abs=25)


def test_min_detail_must_keep_small_boxes_whole():
    for bad in (0.5, 1.5):
        with pytest.raises(ValueError, match="min_detail"):
            CropOptions(min_detail=bad)


def test_atomic_bytes_replace_whole_files_only(tmp_path):
    import os

    from model.atomic import write_bytes

    dest = tmp_path / "new" / "dir" / "crop.jpg"
    write_bytes(dest, b"first")  # missing folders are made
    mask = os.umask(0)
    os.umask(mask)
    assert dest.read_bytes() == b"first" and dest.stat().st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(TypeError):
        write_bytes(dest, None)  # fails mid-write
    assert dest.read_bytes() == b"first"
    assert os.listdir(dest.parent) == ["crop.jpg"]  # no temporary file left behind
