"""Temperature scaling: one number T, fitted on the validation split, divides the logits before
the softmax (or sigmoid). It keeps every argmax, so accuracy is unchanged, and makes the top
probability mean what it says. T lives inside the saved model, as built-in layers (a Dense
without activation, Rescaling by 1/T, then the activation), so every consumer that loads the
.keras file (the service, the gate, reproduce) gets calibrated probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import optimize

if TYPE_CHECKING:
    import keras

HEAD = "probabilities"  # the trained Dense head (model/architectures.py)
BINS = 10


def logits_model(model: keras.Model) -> keras.Model:
    """model with its head's activation left out: the same weights, logits out."""
    import keras

    head = model.get_layer(HEAD)
    dense = keras.layers.Dense(head.units, name="logits")
    logits = dense(head.input)
    dense.set_weights(head.get_weights())
    return keras.Model(model.inputs, logits, name=model.name)


def with_temperature(logits: keras.Model, temperature: float) -> keras.Model:
    """The calibrated model: logits / temperature, then sigmoid (one unit) or softmax."""
    import keras

    units = logits.output.shape[-1]
    scaled = keras.layers.Rescaling(1.0 / temperature, name="temperature")(logits.output)
    out = keras.layers.Activation("sigmoid" if units == 1 else "softmax", name=HEAD)(scaled)
    return keras.Model(logits.inputs, out, name=logits.name)


def temperature_of(model: keras.Model) -> float | None:
    """The temperature inside a saved model, or None if it has none."""
    for layer in model.layers:
        if layer.name == "temperature":
            return round(1.0 / float(layer.scale), 6)
    return None


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(n, classes) probabilities of logits at a temperature (one logit: two classes)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if z.shape[-1] == 1:
        positive = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.stack([1.0 - positive, positive], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, truth: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true classes."""
    probs = probabilities(logits, temperature)[np.arange(len(truth)), truth]
    return float(-np.log(np.clip(probs, 1e-12, 1.0)).mean())


LOW, HIGH = 0.05, 20.0  # the temperatures searched


def fit_temperature(logits: np.ndarray, truth: np.ndarray) -> float | None:
    """The temperature (0.05 to 20) that minimises the negative log-likelihood of truth, or
    None when the validation split cannot pin it: an optimum at the search's edge means every
    more extreme temperature fits better, as when no validation crop is wrong (the loss then
    falls all the way to certainty, which a larger sample would refute)."""
    truth = np.asarray(truth, dtype=int)
    if not len(truth):
        return None
    found = optimize.minimize_scalar(lambda t: nll(logits, truth, float(np.exp(t))),
                                     bounds=(np.log(LOW), np.log(HIGH)), method="bounded")
    temperature = float(np.exp(found.x))
    if temperature < LOW * 1.05 or temperature > HIGH / 1.05:
        return None
    return round(temperature, 4)


def reliability(probs: np.ndarray, truth: np.ndarray, bins: int = BINS) -> dict:
    """Top-1 confidence against accuracy in equal-width bins, and the expected calibration
    error (the crop-weighted mean gap between them)."""
    truth = np.asarray(truth, dtype=int)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rows, gap = [], 0.0
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        mean_conf = float(confidence[inside].mean())
        accuracy = float((predicted[inside] == truth[inside]).mean())
        gap += inside.sum() / len(truth) * abs(mean_conf - accuracy)
        rows.append({"bin": b, "confidence": round(mean_conf, 4),
                     "accuracy": round(accuracy, 4), "crops": int(inside.sum())})
    return {"ece": round(gap, 4) if len(truth) else None, "bins": rows}
