"""Held-out metrics: accuracy, per-class precision/recall/F1, confusion matrix and ROC-AUC."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import keras

def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None without both labels."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    _, inverse, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average 1-based rank of ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(truth: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Score predictions (argmax of probs) against true class indices."""
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
    if n == 2:
        auc = roc_auc(truth == 1, probs[:, 1])
    else:  # one class against the rest, averaged over the classes present in the test split
        aucs = [roc_auc(truth == i, probs[:, i]) for i in range(n)]
        aucs = [a for a in aucs if a is not None]
        auc = float(np.mean(aucs)) if aucs else None
    return {
        "split": "test",
        "test_examples": len(truth),
        "accuracy": round(float((predicted == truth).mean()), 4) if len(truth) else 0.0,
        "macro_f1": round(float(np.mean([c["f1"] for c in per_class.values()])), 4),
        "roc_auc": None if auc is None else round(auc, 4),
        "roc_auc_kind": "binary" if n == 2 else "one-vs-rest macro",
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
        # The reference for drift of the served model's confidence (flows/watching/drift.py).
        "test_top_probabilities": [round(float(p), 4) for p in probs.max(axis=1)]
        if len(truth) else [],
    }


def evaluate_model(model: keras.Model, class_names: list[str], table: pd.DataFrame, root: Path,
                   image_size: int, batch_size: int = 32) -> dict:
    """Score a Keras model (whose outputs follow class_names) on the rows of table, read from
    root: its shards (a table with Shard and Row) or crop files. Predictions come in the
    table's order, so each lines up with its row (and its ImageID)."""
    from model.data import label_indices, make_dataset  # TensorFlow loads only when needed
    from model.predict import probabilities

    data = make_dataset(table, root, class_names, image_size, batch_size, training=False)
    probs = probabilities(model.predict(data, verbose=0), len(class_names))
    return classification_metrics(label_indices(table, class_names), probs, class_names)
