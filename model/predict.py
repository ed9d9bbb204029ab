"""Turning model outputs into class probabilities, shared by evaluation and serving."""

from __future__ import annotations

import numpy as np


def probabilities(outputs: np.ndarray, num_classes: int) -> np.ndarray:
    """Return an (n, num_classes) probability matrix from sigmoid or softmax outputs."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if num_classes == 2 and outputs.shape[-1] == 1:
        positive = outputs[:, 0]
        return np.stack([1.0 - positive, positive], axis=1)
    return outputs


def top_k(probs: np.ndarray, class_names: list[str], k: int = 3) -> list[dict[str, float]]:
    """The k most likely classes of one image, most likely first."""
    order = np.argsort(probs)[::-1][:k]
    return [{"label": class_names[i], "probability": round(float(probs[i]), 6)} for i in order]
