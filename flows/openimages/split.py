"""Splitting a dataset into train, validation and test by source photo, stably.

A photo's split is a function of its ImageID and the seed alone: a hash of the two, read as
a number in [0, 1), against the fractions. Adding photos never moves one already split, so
shards, test sets and the promotion gate's comparisons stay put from one run to the next,
and no photo gives crops to two splits. Classes are stratified in expectation only.
"""

from __future__ import annotations

import hashlib

import pandas as pd

_SCALE = float(2 ** 64)


def seeded_rank(image_id: str, seed: int) -> int:
    """A reproducible pseudo-random rank of an image under a seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{image_id}".encode()).digest()[:8], "big")


def split_of(image_id: str, seed: int, validation: float, test: float) -> str:
    """The split of one photo: test below `test`, then validation, then train."""
    draw = seeded_rank(image_id, seed) / _SCALE
    return "test" if draw < test else "validation" if draw < test + validation else "train"


def assign_splits(boxes: pd.DataFrame, seed: int, validation: float, test: float) -> pd.Series:
    """The split of every image of boxes (index ImageID)."""
    images = pd.unique(boxes.ImageID)
    return pd.Series([split_of(i, seed, validation, test) for i in images], index=images,
                     name="Split", dtype=object).rename_axis("ImageID")
