"""BentoML service: POST /classify takes an image and returns labels with probabilities."""

from __future__ import annotations

import os
import time
from pathlib import Path

import bentoml
from bentoml.exceptions import InvalidArgument

with bentoml.importing():
    import keras

    from model.predict import probabilities, top_k
    from service.images import BadImage, load_rgb

DEFAULT_MODEL = "openimager-classifier:latest"


@bentoml.service(traffic={"timeout": 60})
class Classifier:
    """Serves the latest registered openimager model."""

    def __init__(self) -> None:
        tag = os.environ.get("OPENIMAGER_MODEL_TAG", DEFAULT_MODEL)
        self.stored = bentoml.models.get(tag)
        self.model = keras.saving.load_model(self.stored.path_of("model.keras"), compile=False)
        self.class_names: list[str] = list(self.stored.info.metadata["class_names"])

    @bentoml.api
    def classify(self, image: Path, top: int = 3) -> dict:
        """Classify one image file; the most likely classes come first."""
        start = time.perf_counter()
        try:
            pixels = load_rgb(image)
        except BadImage as error:
            raise InvalidArgument(str(error)) from error
        outputs = self.model.predict(pixels[None], verbose=0)
        probs = probabilities(outputs, len(self.class_names))[0]
        return {
            "labels": top_k(probs, self.class_names, max(1, min(top, len(self.class_names)))),
            "model": str(self.stored.tag),
            "seconds": round(time.perf_counter() - start, 4),
        }
