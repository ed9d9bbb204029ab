"""The model service: holds the Keras model and runs adaptive batches of prepared images.

Only this process type imports TensorFlow; the HTTP workers that decode uploads stay small.
"""

from __future__ import annotations

import logging
from typing import Any

import bentoml

from service.config import Tuning
from service.source import declared_model, lineage, locate, served_choice

with bentoml.importing():
    import numpy as np

    from model.predict import probabilities

log = logging.getLogger("openimager.service")
# Read when the service class is defined: BentoML needs the numbers in the decorators.
TUNING = Tuning.from_env()


def json_output(service: bentoml.Service) -> None:
    """Declare every API's answers JSON, once."""
    # Else BentoML derives the media type from a JSON schema it builds for every response:
    # a tenth of a worker's CPU.
    for api in service.apis.values():
        api.output_spec.media_type = "application/json"


def configure_tensorflow(tuning: Tuning) -> None:
    """Bound TensorFlow's thread pools so model workers do not oversubscribe the cores."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(tuning.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(tuning.inter_op_threads)


def input_size(model: Any) -> int:
    """The square input size of a model, from its Resizing layer."""
    for layer in model.layers:
        if type(layer).__name__ == "Resizing":
            return int(layer.height)
    raise ValueError("the model has no Resizing layer: its input size is unknown")


# BentoML's client to this service recycles its connection pool every 100 calls by default,
# failing the calls in flight (bentoml#5540, #4971): keep one pool for a worker's life.
# Its access log would repeat the HTTP workers' one, line for line.
@bentoml.service(name="openimager-model", workers=TUNING.model_workers, traffic={"timeout": 60},
                 runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9},
                 logging={"access": {"enabled": False}})
class Predictor:
    """Class probabilities for batches of size x size RGB images."""

    # A class attribute so `bentoml build` packs the chosen model into the Bento.
    bento_model = declared_model()

    @bentoml.on_deployment
    def check_model() -> None:
        """Fail `bentoml serve` at once, with the reason, when there is no model."""
        locate(served_choice(Predictor.bento, Predictor.name))

    def __init__(self) -> None:
        configure_tensorflow(TUNING)
        import keras  # here, not at import: only model workers pay for TensorFlow

        self.choice = served_choice(Predictor.bento, Predictor.name)
        located = locate(self.choice)
        self.model = keras.saving.load_model(located.file, compile=False)
        self.class_names: list[str] = list(located.metadata["class_names"])
        self.image_size = int(located.metadata.get("image_size") or input_size(self.model))
        self.lineage = lineage(self.choice, located, self.image_size)
        # Trace the graph now so early requests do not pay for it: after two batch sizes,
        # TensorFlow traces one graph for any size.
        for n in (1, 2, 3):
            self.predict_batch(np.zeros((n, self.image_size, self.image_size, 3), np.uint8))
        log.info("serving %s (%s) with %d TensorFlow threads", located.tag, self.choice.source,
                 TUNING.intra_op_threads)

    def predict_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (n, classes) for uint8 pixels (n, size, size, 3)."""
        outputs = self.model.predict_on_batch(pixels)
        return probabilities(outputs, len(self.class_names)).astype(np.float32)

    @bentoml.api(batchable=True, max_batch_size=TUNING.max_batch_size,
                 max_latency_ms=TUNING.max_latency_ms)
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of prepared images (merged across requests)."""
        return self.predict_batch(pixels)

    @bentoml.api
    def describe(self) -> dict:
        """The served model's lineage and input size."""
        return self.lineage


json_output(Predictor)
