"""The training dataset: crops in Parquet shards, and the live table that says which shard
rows are the dataset, where each crop came from and its split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from flows.openimages.compaction import compact
from flows.openimages.crop import CropOptions
from flows.openimages.cropjobs import CropRunner, crop_boxes
from flows.openimages.shards import SHARDS_DIR, prune_shards
from flows.openimages.split import assign_splits, seeded_rank
from model.atomic import write_parquet

CROPS_TABLE = "crops.parquet"
# The selected boxes that are not in the dataset, and why. Every box that is in it has its row
# in the live table, so the selection itself is not kept here: a copy of it would be rewritten
# and published whole with every new crop.
SKIPPED_TABLE = "skipped.parquet"
SKIPPED_COLUMNS = ["ImageID", "BoxID", "Class", "Status", "Error"]
CROP_FILES = "crops"  # per-crop JPEGs, for browsing only (crop_files)
TABLE_COLUMNS = ["CropPath", "Class", "ClassMID", "LabelName", "ImageID", "BoxID", "Split",
                 "XMin", "XMax", "YMin", "YMax", "IsOccluded", "IsTruncated", "IsInside",
                 "Rotation", "Width", "Height", "Author", "License", "OriginalLandingURL",
                 "CropKey", "Shard", "Row"]


def crops_root(dataset_dir: Path, table: pd.DataFrame) -> Path:
    """Where the table's crops are read from: its shards, or per-crop files (older tables)."""
    return dataset_dir / (SHARDS_DIR if "Shard" in table else CROP_FILES)


def in_shard_order(table: pd.DataFrame) -> pd.DataFrame:
    """The table in the order its crops are stored (each shard read once, front to back)."""
    return table.sort_values(["Shard", "Row"], kind="stable").reset_index(drop=True)


def dataset_id(table: pd.DataFrame) -> str:
    """A content hash of the crops table: equal ids mean the same examples, cut the same way
    from the same photos (CropKey), in the same splits. Trained models are reused by it."""
    columns = ["CropPath", "Class", "Split", *(["CropKey"] if "CropKey" in table else [])]
    key = table[columns].sort_values("CropPath").to_csv(index=False)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def build_dataset(
    boxes: pd.DataFrame,
    manifest: pd.DataFrame,
    out_dir: Path,
    options: CropOptions,
    seed: int = 0,
    validation: float = 0.15,
    test: float = 0.15,
    max_crops_per_class: int | None = None,
    run_chunks: CropRunner | None = None,
    chunk_images: int = 500,
    crop_files: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Crop the selection into shards under out_dir/shards (chunks run by run_chunks, or on
    a local process pool; with crop_files per-crop JPEGs under out_dir/crops as well), compact
    them when it pays, and return (live crops table, skipped boxes)."""
    table_path, shard_dir = out_dir / CROPS_TABLE, out_dir / SHARDS_DIR
    previous = pd.read_parquet(table_path) if table_path.exists() else None
    # A photo's split depends on its ImageID alone, so it is known before cropping and
    # written into the shards.
    boxes = boxes.assign(Split=boxes.ImageID.map(assign_splits(boxes, seed, validation, test)))
    crops = crop_boxes(boxes, manifest, shard_dir, options, previous=previous,
                       run_chunks=run_chunks, chunk_images=chunk_images,
                       out_dir=out_dir / CROP_FILES if crop_files else None)
    usable = crops[crops.Status == "ok"][TABLE_COLUMNS].reset_index(drop=True)
    usable["Row"] = usable.Row.astype("int64")
    if max_crops_per_class:
        usable = cap_per_class(usable, max_crops_per_class, seed)
    skipped = crops[crops.Status != "ok"][SKIPPED_COLUMNS]
    usable = in_shard_order(compact(usable, shard_dir))
    prune_shards(shard_dir, set(usable.Shard))
    prune(out_dir / CROP_FILES, set(usable.CropPath) if crop_files else set())
    write_parquet(table_path, usable)
    # Text columns even when empty, in a stable order: an unchanged table is the same file,
    # which a publish does not send again.
    skipped = (skipped.fillna({"Error": ""}).astype("string")
               .sort_values(["ImageID", "BoxID"]).reset_index(drop=True))
    write_parquet(out_dir / SKIPPED_TABLE, skipped)
    (out_dir / "selection.parquet").unlink(missing_ok=True)  # written here by older versions
    return usable, skipped


def cap_per_class(table: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    """Keep at most cap crops of each class, whole images first in a seeded order, per split
    in proportion, so the splits keep their shares."""
    order = table.ImageID.map(lambda i: seeded_rank(i, seed))
    ranked = table.assign(_order=order).sort_values(["Class", "_order", "BoxID"])
    share = ranked.groupby("Class").CropPath.transform("size")
    kept = ranked.groupby(["Class", "Split"], group_keys=False).apply(
        lambda g: g.head(max(1, round(cap * len(g) / share.loc[g.index[0]]))))
    return kept.drop(columns="_order").sort_values("CropPath").reset_index(drop=True)


def class_weights(table: pd.DataFrame) -> dict[str, float]:
    """Weights that make every class count equally in training (from the train split)."""
    counts = table[table.Split == "train"].Class.value_counts()
    return {c: round(counts.sum() / (len(counts) * n), 4) for c, n in counts.sort_index().items()}


def prune(crops_dir: Path, keep: set[str]) -> int:
    """Delete crop files that no row refers to any more, and the temporary files of writes an
    interrupted run left behind (the dataset folder is published as it is); return how many."""
    removed = 0
    for path in crops_dir.rglob("*") if crops_dir.exists() else []:
        unused = path.suffix == ".jpg" and path.relative_to(crops_dir).as_posix() not in keep
        partial = path.name.startswith(".") and path.suffix == ".part"
        if (unused or partial) and path.is_file():
            path.unlink()
            removed += 1
    return removed
