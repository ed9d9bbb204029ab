"""Held-out metrics: accuracy, per-class precision/recall/F1, confusion matrix and ROC-AUC."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from model.intervals import Outcome, mean_auc, metric_intervals, roc_auc

if TYPE_CHECKING:
    import keras

__all__ = ["classification_metrics", "evaluate_model", "metrics_of", "outcome_of", "roc_auc"]


def classification_metrics(truth: np.ndarray, probs: np.ndarray, class_names: list[str],
                           photos: list[str] | tuple[str, ...] | None = None) -> dict:
    """Score predictions (argmax of probs) against true class indices, each metric with its
    95 % interval from a bootstrap over photos (the source photo of every crop; each crop its
    own photo when None)."""
    truth = np.asarray(truth, dtype=int)
    predicted = probs.argmax(axis=1)
    n = len(class_names)
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (truth, predicted), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        tp = confusion[i, i]
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i, :].sum() if confusion[i, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": round(float(precision), 4),
                           "recall": round(float(recall), 4),
                           "f1": round(float(f1), 4), "support": int(confusion[i, :].sum())}
    # Two classes: class 1's; else one against the rest, averaged over the present classes.
    auc = mean_auc(truth, probs) if len(truth) else None
    photos = tuple(str(p) for p in photos) if photos is not None else tuple(
        f"crop-{i}" for i in range(len(truth)))
    bounds = metric_intervals(Outcome(photos, truth, probs, tuple(class_names)))
    return {
        "split": "test",
        "test_examples": len(truth),
        "accuracy": round(float((predicted == truth).mean()), 4) if len(truth) else 0.0,
        "macro_f1": round(float(np.mean([c["f1"] for c in per_class.values()])), 4),
        "roc_auc": None if auc is None else round(auc, 4),
        "roc_auc_kind": "binary" if n == 2 else "one-vs-rest macro",
        "per_class": per_class,
        "intervals": bounds,
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
        # The reference for drift of the served model's confidence (flows/watching/drift.py).
        "test_top_probabilities": [round(float(p), 4) for p in probs.max(axis=1)]
        if len(truth) else [],
    }


TOP_BINS = 100  # top-1 probabilities are kept as counts in bins of 0.01


def drift_reference(top_probabilities: list[float], widths: list[int], heights: list[int]
                    ) -> dict:
    """What the served traffic is compared with (flows/watching/drift.py), compact enough
    for the model's metadata: the test split's top-1 probabilities as counts in 100 bins of
    0.01 (bin 50 and up: 0.5 and over) with their exact mean, and the test crops' widths and
    heights as counts per size in pixels."""
    top = np.clip(np.asarray(top_probabilities, dtype=float), 0.0, 1.0)
    # Rounded first, so 0.29 (28.999... in floating point) falls in bin 29.
    bins = np.minimum(np.floor(np.round(top * TOP_BINS, 6)).astype(int), TOP_BINS - 1)

    def sizes(values: list[int]) -> dict[str, int]:
        found, counts = np.unique(np.asarray(values, dtype=int), return_counts=True)
        return {str(int(v)): int(n) for v, n in zip(found, counts, strict=True)}

    return {
        "test_examples": len(top),
        "top_probability": {
            "counts": np.bincount(bins, minlength=TOP_BINS).tolist() if len(top) else [],
            "mean": round(float(top.mean()), 4) if len(top) else None},
        "width": sizes(widths),
        "height": sizes(heights),
    }


def outcome_of(model: keras.Model, class_names: list[str], table: pd.DataFrame, root: Path,
               image_size: int, batch_size: int = 32) -> Outcome:
    """A Keras model's answers (outputs following class_names) on the rows of table, crop by
    crop with each crop's source photo (ImageID)."""
    from model.data import label_indices, make_dataset  # TensorFlow loads only when needed
    from model.predict import probabilities

    data = make_dataset(table, root, class_names, image_size, batch_size, training=False)
    probs = probabilities(model.predict(data, verbose=0), len(class_names))
    return Outcome(tuple(str(i) for i in table.ImageID), label_indices(table, class_names),
                   probs, tuple(class_names))


def metrics_of(outcome: Outcome) -> dict:
    """classification_metrics of an outcome."""
    return classification_metrics(outcome.truth, outcome.probs, list(outcome.class_names),
                                   outcome.photos)


def evaluate_model(model: keras.Model, class_names: list[str], table: pd.DataFrame, root: Path,
                   image_size: int, batch_size: int = 32) -> dict:
    """Score a Keras model (whose outputs follow class_names) on the rows of table."""
    return metrics_of(outcome_of(model, class_names, table, root, image_size, batch_size))
