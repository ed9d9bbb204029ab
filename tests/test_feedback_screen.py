"""Feedback before training: near-duplicates of held-out crops never join, and feedback is
capped per class."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from flows.openimages.feedbackscreen import MAX_DISTANCE, dhash, distance, screen


def scene(seed: int, size=(200, 150)) -> Image.Image:
    """A picture with structure: random blocks, smoothed."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize(size, Image.Resampling.BILINEAR)


def test_a_resized_recompressed_copy_is_near_and_other_pictures_are_far(tmp_path):
    original = tmp_path / "a.jpg"
    scene(1).save(original, quality=90)
    copy = tmp_path / "copy.png"
    scene(1).resize((97, 70)).save(copy)  # another size and format
    near = distance(dhash(original), dhash(copy))
    far = []
    for seed in range(2, 30):
        other = tmp_path / f"o{seed}.jpg"
        scene(seed).save(other)
        far.append(distance(dhash(original), dhash(other)))
    assert near <= 2 < MAX_DISTANCE < min(far), (near, sorted(far)[:3])


def test_held_out_copies_are_kept_out_and_feedback_is_capped(tmp_path):
    crops = tmp_path / "crops"
    crops.mkdir()
    rows = []
    for i in range(12):
        split = "test" if i == 0 else ("validation" if i == 1 else "train")
        scene(100 + i).save(crops / f"c{i}.jpg")
        rows.append({"CropPath": f"c{i}.jpg", "Class": "A", "Split": split})
    table = pd.DataFrame(rows)  # 10 train crops of A
    images = []
    for i, seed in enumerate([100, 101, 200, 201, 202, 203, 204]):  # two held-out copies
        path = tmp_path / f"f{i}.png"
        scene(seed, (320, 240)).save(path)
        images.append({"sha256": f"s{i}", "Class": "A", "path": path})
    kept, report = screen(pd.DataFrame(images), table, crops, max_share=0.2)
    assert [d["sha256"] for d in report["near_duplicates"]] == ["s0", "s1"]
    assert {d["matches"] for d in report["near_duplicates"]} == {"c0.jpg", "c1.jpg"}
    # At most 20 % of A's train split: 2 of 10 + 2; the oldest two are kept.
    assert list(kept.sha256) == ["s2", "s3"] and report["over_cap"] == {"A": 3}
    everything, _ = screen(pd.DataFrame(images[2:]), table, crops, max_share=1.0)
    assert len(everything) == 5
