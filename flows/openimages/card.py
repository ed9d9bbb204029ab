"""The dataset card: what is in a built dataset, where it came from, and what it looks like."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from PIL import Image

from flows.openimages.shards import SHARDS_DIR, read_images
from model.atomic import atomic_path, write_text

# What the seed CNN is not, said wherever a build with it is described (card, package README).
REAL_RUN = ("A real run uses transfer learning instead: MobileNetV3Small on ImageNet weights "
            "with a new head (`OPENIMAGER_ARCHITECTURE=transfer` and "
            "`OPENIMAGER_WEIGHTS=imagenet`, the defaults; `--architecture transfer` on the "
            "command line).")
SYNTHETIC_NOTE = ("> The bundled sample is synthetic: generated scenes in the real Open Images "
                  "layouts, for offline runs.\n")


def balance_chart(table: pd.DataFrame, dest: Path) -> Path:
    """A bar chart of crops per class, stacked by split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = table.pivot_table(index="Class", columns="Split", values="CropPath",
                               aggfunc="count", fill_value=0)
    counts = counts.reindex(columns=[s for s in ("train", "validation", "test") if s in counts])
    figure, axes = plt.subplots(figsize=(max(4, 1.2 * len(counts)), 3.2))
    counts.plot.bar(stacked=True, ax=axes, rot=0)
    axes.set_ylabel("crops")
    axes.set_title("Crops per class and split")
    figure.tight_layout()
    with atomic_path(dest) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return dest


def sample_grid(table: pd.DataFrame, dataset_dir: Path, dest: Path, per_class: int = 6,
                cell: int = 96) -> Path:
    """A grid of a few crops per class, one labelled row per class (read from the shards)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted(table.Class.unique())
    figure, axes = plt.subplots(len(classes), per_class, squeeze=False,
                                figsize=(per_class * cell / 72, len(classes) * cell / 72))
    for row, name in enumerate(classes):
        chosen = table[table.Class == name].sort_values("CropPath").head(per_class)
        images = crop_images(chosen, dataset_dir)
        for col in range(per_class):
            axis = axes[row][col]
            axis.axis("off")
            if col < len(images):
                with Image.open(io.BytesIO(images[col])) as image:
                    axis.imshow(image.convert("RGB"))
        axes[row][0].set_title(name, loc="left", fontsize=9)
    figure.tight_layout()
    with atomic_path(dest) as tmp:
        figure.savefig(tmp, format="png", dpi=72)
    plt.close(figure)
    return dest


def crop_images(rows: pd.DataFrame, dataset_dir: Path) -> list[bytes]:
    """The JPEG bytes of some rows of the crops table: from their shards, or their files."""
    if "Shard" in rows:
        ordered = rows.sort_values(["Shard", "Row"])
        found = dict(zip(ordered.index, read_images(dataset_dir / SHARDS_DIR,
                                                    ordered.Shard.tolist(),
                                                    ordered.Row.tolist()), strict=True))
        return [found[i] for i in rows.index]
    return [(dataset_dir / "crops" / p).read_bytes() for p in rows.CropPath]


def card_text(table: pd.DataFrame, skipped: pd.DataFrame, info: dict) -> str:
    """The card's markdown."""
    counts = table.pivot_table(index=["Class", "ClassMID"], columns="Split", values="CropPath",
                               aggfunc="count", fill_value=0).reset_index()
    splits = [s for s in ("train", "validation", "test") if s in counts]
    photos = table.groupby("Class").ImageID.nunique()
    expansion = info.get("expansion", {})
    rows = "\n".join(
        f"| {r.Class} | {r.ClassMID} | {expansion.get(r.Class, r.Class)} | "
        + " | ".join(str(getattr(r, s)) for s in splits) + f" | {photos[r.Class]} |"
        for r in counts.itertuples())
    licences = table.drop_duplicates("ImageID").License.value_counts()
    licence_rows = "\n".join(f"| {lic} | {n} |" for lic, n in licences.items())
    filters = "\n".join(f"- `{k}`: {v}" for k, v in sorted(info.get("filters", {}).items()))
    weights = ", ".join(f"{c} {w}" for c, w in (info.get("class_weights") or {}).items())
    weighting = (f"Class weights used in training (inverse frequency in the train split): "
                 f"{weights}." if weights else
                 "Training weighs every crop alike (OPENIMAGER_CLASS_WEIGHTS is off); "
                 "`class_weights.json` holds the inverse-frequency weights it would use.")
    skips = ", ".join(f"{k} {v}" for k, v in skipped.Status.value_counts().items()) or "none"
    return f"""# Dataset card: {', '.join(sorted(table.Class.unique()))}

{SYNTHETIC_NOTE if info.get("synthetic") else ""}
Open Images {info.get("openimages_version", "?")}; {len(table)} crops from
{table.ImageID.nunique()} photos. Train, validation and test are split by source photo, by
a hash of its ImageID (seed {info.get("seed", 0)}): no photo gives crops to two splits, and a
photo keeps its split as the dataset grows.

| class | MID | includes | {' | '.join(splits)} | photos |
|---|---|---|{'---|' * len(splits)}---|
{rows}

{weighting}
Boxes skipped while cropping: {skips}.
{training_text(info.get("training"), bool(info.get("synthetic")))}

![crops per class](class_balance.png)

![sample crops](sample_grid.png)

## Selection filters
{filters or "- none"}

## Photos, authors and licences
{table.Author.nunique()} authors. Every crop's source photo, author, licence and landing page
are in `crops.parquet` and beside its image in `shards/`; CC BY 2.0 asks that they be credited
when the crops are shared.

## Layout
`shards/*.parquet` hold the crops: an `image` column (`bytes`, `path`: the Hugging Face image
convention) with each crop's Class, Split, box, ImageID, author and licence. `crops.parquet`
is the live table: its `Shard` and `Row` say which shard rows are the dataset (a shard may
hold rows dropped since; they are not part of it).

| licence | photos |
|---|---|
{licence_rows}

Annotations: Open Images Dataset, Google (CC BY 4.0; Kuznetsova et al., IJCV 2020).
"""


def training_text(training: dict | None, synthetic: bool) -> str:
    """What a model trained on this data is, and the crop sizes it sees, in plain words."""
    if not training:
        return ""
    size = training.get("image_size")
    if training.get("architecture") == "seed-cnn":
        model = f"the seed CNN, a small CNN learnt from scratch, at {size} px"
    else:
        model = (f"transfer learning (weights: {training.get('weights')}) at {size} px; a real "
                 "run uses ImageNet weights")
    what = ("The scenes are synthetic, so its test accuracy says the pipeline works, not how "
            "well real photos are classified. " if synthetic else "")
    if training.get("architecture") == "seed-cnn":
        what += f"{REAL_RUN} "
    return (f"\nThis run trains {model}. {what}Crops keep at most "
            f"{training.get('crop_size')} px on their longest side; boxes under "
            f"{training.get('min_box_pixels')} px on a side are skipped (the model resizes "
            f"every crop to {size} px, so a smaller box would be upscaled "
            f"{size / max(training.get('min_box_pixels') or 1, 1):.0f}x or more).\n")


def write_card(dataset_dir: Path, table: pd.DataFrame, skipped: pd.DataFrame,
               info: dict) -> Path:
    """Write README.md, class_balance.png and sample_grid.png beside the dataset."""
    balance_chart(table, dataset_dir / "class_balance.png")
    sample_grid(table, dataset_dir, dataset_dir / "sample_grid.png")
    write_text(dataset_dir / "README.md", card_text(table, skipped, info))
    return dataset_dir / "README.md"
