"""The dataset folder holds the table's crops and nothing else: it is published as it is."""

import pandas as pd

from flows.openimages.dataset import dataset_id, prune
from model.atomic import write_bytes


def test_prune_drops_unused_crops_and_interrupted_writes(tmp_path):
    crops = tmp_path / "crops"
    for name in ("Car/a_0.jpg", "Car/b_1.jpg", "Sandwich/c_2.jpg"):
        write_bytes(crops / name, b"jpeg")
    # What a worker killed between creating its temporary file and renaming it leaves.
    (crops / "Car" / ".d_3.jpg.5f0e1a2b3c4d-17.part").write_bytes(b"half")
    assert prune(crops, {"Car/a_0.jpg", "Sandwich/c_2.jpg"}) == 2
    left = sorted(p.relative_to(crops).as_posix() for p in crops.rglob("*") if p.is_file())
    assert left == ["Car/a_0.jpg", "Sandwich/c_2.jpg"]


def test_the_dataset_id_changes_with_how_crops_were_cut():
    table = pd.DataFrame({"CropPath": ["Car/a_0.jpg", "Car/b_1.jpg"], "Class": ["Car", "Car"],
                          "Split": ["train", "test"], "CropKey": ["k1", "k1"]})
    assert dataset_id(table) == dataset_id(table.iloc[::-1])  # row order does not count
    # Other crop options (or cropping code, or a re-downloaded photo) make other examples:
    # a model trained on the old crops must not be reused for them.
    assert dataset_id(table) != dataset_id(table.assign(CropKey=["k2", "k1"]))
    assert dataset_id(table) != dataset_id(table.assign(Split=["train", "train"]))
