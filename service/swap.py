"""One served model as an immutable bundle, loaded and warmed beside the current one.

The model service swaps the whole bundle with one assignment: a batch reads it once, so a
batch in flight finishes on the model it started with, and every answer carries the number
(key) of the model that computed it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.source import METADATA_FILE, Choice, lineage, locate

PINNED = ("env", "bento")  # OPENIMAGER_MODEL_TAG and a Bento's packed model never change


@dataclass(frozen=True)
class Served:
    """A loaded, warmed model with what its answers need."""

    identity: str  # the tag, or for a folder the tag and top hash in its metadata
    key: int  # identity as a number that fits exactly in a float32 column
    model: Any
    class_names: tuple[str, ...]
    image_size: int
    lineage: dict
    loaded_at: float


def model_key(identity: str) -> int:
    """24 bits of the identity's hash: exact in float32, distinct for the few models served."""
    return int(hashlib.sha256(identity.encode()).hexdigest()[:6], 16)


def identity_of(choice: Choice) -> str | None:
    """What the choice names now, without loading a model; None when nothing is there yet."""
    if choice.path is not None:
        try:
            meta = json.loads((choice.path / METADATA_FILE).read_text())
        except (OSError, ValueError):
            return None  # being installed, or gone: keep what is served
        return f"{meta.get('tag')}@{meta.get('top_hash')}"
    if choice.source == "latest":
        import bentoml

        try:
            return str(bentoml.models.get(choice.tag).tag)
        except bentoml.exceptions.NotFound:
            return None
    return str(choice.tag)


def input_size(model: Any) -> int:
    """The square input size of a model, from its Resizing layer."""
    for layer in model.layers:
        if type(layer).__name__ == "Resizing":
            return int(layer.height)
    raise ValueError("the model has no Resizing layer: its input size is unknown")


def load(choice: Choice, identity: str) -> Served:
    """Load the chosen model and warm it; raises (NoModel, OSError, ...) if either fails."""
    import keras  # here, not at import: only model workers pay for TensorFlow

    located = locate(choice)
    model = keras.saving.load_model(located.file, compile=False)
    class_names = tuple(located.metadata["class_names"])
    size = int(located.metadata.get("image_size") or input_size(model))
    # Trace the graph now so the first requests do not pay for it: after two batch sizes,
    # TensorFlow traces one graph for any size. A model that cannot predict fails here.
    for n in (1, 2, 3):
        out = np.asarray(model.predict_on_batch(np.zeros((n, size, size, 3), np.uint8)))
        if out.shape[0] != n or not np.isfinite(out).all():
            raise ValueError(f"{located.tag} gave {out.shape} non-finite or misshapen outputs "
                             "on a warm-up batch")
    info = {**lineage(choice, located, size), "model_key": model_key(identity)}
    return Served(identity, model_key(identity), model, class_names, size, info, time.time())
