"""Held-out metrics: accuracy, per-class precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

import numpy as np


def classification_metrics(truth: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Score predictions (argmax of probs) against true class indices."""
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
    return {
        "split": "test",
        "test_examples": len(truth),
        "accuracy": round(float((predicted == truth).mean()), 4) if len(truth) else 0.0,
        "macro_f1": round(float(np.mean([c["f1"] for c in per_class.values()])), 4),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
    }
