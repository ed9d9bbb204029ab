"""Screening labelled served images before they join training: none may be a near-duplicate of
a validation or test crop (that would leak the held-out answer into training, and a client
could steer the published figure by uploading test photos), and feedback may be at most a set
share of each class's train split (a flood of one client's labels cannot outweigh the data).

Near-duplicates are found with a difference hash (dHash): the picture in grey at 9 x 8,
one bit per horizontally adjacent pair; two images within a few bits are the same picture,
whatever their size, JPEG quality or small colour shifts."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps

from flows.openimages.dataset import in_shard_order
from flows.openimages.shards import read_images

HASH_SIDE = 8
MAX_DISTANCE = 6  # bits of 64: measured apart as in tests/test_feedback_screen.py
HELD_OUT = ("validation", "test")


def dhash(path: Path | bytes) -> int:
    """The 64-bit difference hash of an image file (or its bytes)."""
    with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as image:
        grey = ImageOps.exif_transpose(image).convert("L").resize(
            (HASH_SIDE + 1, HASH_SIDE), Image.Resampling.LANCZOS)
    pixels = list(grey.getdata())
    bits = 0
    for row in range(HASH_SIDE):
        for col in range(HASH_SIDE):
            left = pixels[row * (HASH_SIDE + 1) + col]
            right = pixels[row * (HASH_SIDE + 1) + col + 1]
            bits = (bits << 1) | (left > right)
    return bits


def distance(a: int, b: int) -> int:
    """Bits in which two hashes differ."""
    return (a ^ b).bit_count()


def held_out_hashes(table: pd.DataFrame, crops_dir: Path) -> dict[int, str]:
    """dHash of every validation and test crop, with its CropPath: read from the shards in
    crops_dir when the table names them (Shard, Row), else from per-crop files."""
    rows = table[table.Split.isin(HELD_OUT)]
    if "Shard" not in rows:
        return {dhash(crops_dir / path): path for path in rows.CropPath}
    rows = in_shard_order(rows)
    data = read_images(crops_dir, rows.Shard.tolist(), rows.Row.tolist())
    return {dhash(image): path for image, path in zip(data, rows.CropPath, strict=True)}


def screen(images: pd.DataFrame, table: pd.DataFrame, crops_dir: Path, max_share: float,
           max_distance: int = MAX_DISTANCE) -> tuple[pd.DataFrame, dict]:
    """The labelled images (sha256, Class, path; oldest first) that may join the train split,
    and what was kept out: near-duplicates of held-out crops, and per class those over
    max_share of the class's train split (the oldest are kept, so a later flood displaces
    nothing)."""
    report = {"near_duplicates": [], "over_cap": {}, "max_share": max_share,
              "max_distance": max_distance}
    if images.empty:
        return images, report
    held = held_out_hashes(table, crops_dir)
    keep = []
    for image in images.itertuples():
        mine = dhash(image.path)
        match = next((path for h, path in held.items() if distance(h, mine) <= max_distance),
                     None)
        if match is not None:
            report["near_duplicates"].append({"sha256": image.sha256, "matches": match})
        keep.append(match is None)
    clean = images[keep]
    train = table[table.Split == "train"].Class.value_counts()
    allowed = []
    for name, rows in clean.groupby("Class", sort=True):
        # feedback <= share * (train + feedback)  <=>  feedback <= share / (1 - share) * train
        cap = int(max_share / (1 - max_share) * int(train.get(name, 0))) if max_share < 1 \
            else len(rows)
        allowed.append(rows.head(cap))
        if len(rows) > cap:
            report["over_cap"][name] = len(rows) - cap
    kept = pd.concat(allowed).sort_index() if allowed else clean
    return kept.reset_index(drop=True), report
