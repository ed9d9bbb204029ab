"""One served model as an immutable bundle, loaded and warmed beside the current one.

The worker swaps the whole bundle with one assignment: a batch reads it once, so a batch in
flight finishes on the model it started with, and its answers name that model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.source import METADATA_FILE, Choice, lineage, locate

# OPENIMAGER_MODEL_TAG, a pinned registry revision and a Bento's packed model never change
PINNED = ("env", "revision", "bento")


@dataclass(frozen=True)
class Served:
    """A loaded, warmed model with what its answers need."""

    identity: str  # the tag, or for a folder or the registry the tag and top hash (tag@hash)
    model: Any
    class_names: tuple[str, ...]
    image_size: int
    lineage: dict
    loaded_at: float


def identity_of(choice: Choice) -> str | None:
    """What the choice names now, without loading a model; None when nothing is there yet.
    A registry choice is resolved (service.source.resolved) and names tag@top_hash."""
    if choice.followed is not None:
        return f"{choice.tag}@{choice.followed.top_hash}"
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
    import keras  # here, not at import: importing this module costs no TensorFlow

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
    info = lineage(choice, located, size)
    return Served(identity, model, class_names, size, info, time.time())
