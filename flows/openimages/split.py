"""Splitting a dataset into train, validation and test by source image, stratified by class."""

from __future__ import annotations

import hashlib

import pandas as pd


def seeded_rank(image_id: str, seed: int) -> int:
    """A reproducible pseudo-random rank of an image under a seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{image_id}".encode()).digest()[:8], "big")


def assign_splits(boxes: pd.DataFrame, seed: int, validation: float, test: float) -> pd.Series:
    """The split of every image (index ImageID), so that no photo is in two splits.

    Each image is filed under its rarest class, and within a class images are dealt out in a
    seeded order: test first, then validation, then train, in the requested fractions. A class
    with three images or more gets at least one in test and one in validation.
    """
    pairs = boxes[["ImageID", "Class"]].drop_duplicates()
    images_per_class = pairs.Class.value_counts()
    pairs = pairs.assign(rarity=pairs.Class.map(images_per_class))
    primary = pairs.sort_values(["rarity", "Class"]).drop_duplicates("ImageID")
    primary = primary.assign(order=[seeded_rank(i, seed) for i in primary.ImageID])
    split = {}
    for _, group in primary.sort_values("order").groupby("Class", sort=True):
        n = len(group)
        n_test, n_val = round(n * test), round(n * validation)
        if n >= 3:
            n_test, n_val = max(1, n_test), max(1, n_val)
        for rank, image_id in enumerate(group.ImageID):
            split[image_id] = ("test" if rank < n_test else
                               "validation" if rank < n_test + n_val else "train")
    return pd.Series(split, name="Split").rename_axis("ImageID")
