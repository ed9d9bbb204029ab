"""What a training run leaves beside its model: metrics.json and PNG reports, written atomically
(a reader sees the old file or the new one)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CURVES_PNG = "training_curves.png"
CONFUSION_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability.png"
# Why a temperature could not be fitted (model/calibration.py fit_temperature: no validation
# crop was wrong); then T stays 1 and the probabilities are the network's own.
NOT_FITTED = "validation separated perfectly, so no temperature could be fitted"


@contextmanager
def atomic_dest(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside dest with dest's suffix; rename it onto dest on success."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Keras and matplotlib pick the format from the suffix, so the temporary keeps it.
    tmp = dest.with_name(f".{dest.stem}.{os.getpid()}.tmp{dest.suffix}")
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(dest: Path, obj: Any) -> None:
    """Write obj as indented JSON to dest atomically."""
    with atomic_dest(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display on servers and workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: dict[str, list[float]], dest: Path,
                    fine_tune_from: int | None = None) -> Path:
    """Loss, accuracy and learning rate per epoch, train against validation."""
    plt = _pyplot()
    panels = [("loss", "loss"), ("accuracy", "accuracy"), ("learning_rate", "learning rate")]
    panels = [(key, title) for key, title in panels if key in history]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        epochs = range(1, len(history[key]) + 1)
        ax.plot(epochs, history[key], marker="o", label="train" if key != "learning_rate" else key)
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker="o", label="validation")
        if fine_tune_from is not None:
            ax.axvline(fine_tune_from + 0.5, color="grey", linestyle=":", label="fine-tuning")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if key == "learning_rate":
            ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    with atomic_dest(dest) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return dest


def confusion_matrix(confusion: list[list[int]], class_names: list[str], dest: Path,
                     title: str = "test split") -> Path:
    """The confusion matrix as a heat map with counts (rows: truth, columns: prediction)."""
    plt = _pyplot()
    n = len(class_names)
    size = 2.5 + 0.55 * n
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(confusion, cmap="Blues")
    peak = max((max(row) for row in confusion), default=0)
    for i in range(n):
        for j in range(n):
            value = confusion[i][j]
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > peak / 2 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix, {title}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    with atomic_dest(dest) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return dest


def reliability_chart(before: dict, after: dict, temperature: float, dest: Path) -> Path:
    """Reliability diagram of the test split: accuracy against top-1 confidence per bin, before
    and after temperature scaling (model/calibration.py reliability), with each ECE."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for found, name, marker in ((before, "before", "o"), (after, f"after (T={temperature})",
                                                         "s")):
        rows = found["bins"]
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker=marker,
                label=f"{name}: ECE {found['ece']}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("top-1 probability (bin mean)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title("reliability, test split")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    with atomic_dest(dest) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return dest


def drift_chart(summary: dict, dest: Path) -> Path:
    """The served traffic's class mix beside the reference mix, with each drift test's
    p-value underneath (summary: flows/watching/drift.py drift)."""
    plt = _pyplot()
    mix = next(t for t in summary["tests"] if t["name"] == "class mix")
    names = sorted(mix["reference"] or {})
    fig, ax = plt.subplots(figsize=(3 + 0.9 * max(len(names), 2), 4.2))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [mix["reference"][n] for n in names], 0.4, label="reference")
    ax.bar([i + 0.2 for i in x], [(mix["traffic"] or {}).get(n, 0) for n in names], 0.4,
           label=f"traffic ({summary['requests']} requests)")
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylabel("share of predictions")
    ax.set_title("served traffic against the test split")
    ax.legend()
    notes = [f"{t['name']}: p={'n/a' if t['p_value'] is None else format(t['p_value'], '.3g')}"
             + (" DRIFT" if t["drift"] else "") for t in summary["tests"]]
    fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.03 * len(notes) + 0.02, 1, 1))
    with atomic_dest(dest) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return dest
