"""The model service: holds the Keras model and runs adaptive batches of prepared images.

Only this process type imports TensorFlow; the HTTP workers that decode uploads stay small.
The model loads in the background (readiness says 503 "loading" until it is warm) and is
replaced, without a failed request, when a newer one is promoted (service.swap).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import bentoml

from service.config import Lifecycle, Tuning
from service.lifecycle import Drain, drain_on_signals
from service.source import declared_model, locate, served_choice
from service.swap import PINNED, Served, identity_of, load

with bentoml.importing():
    import anyio
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


# BentoML's client to this service recycles its connection pool every 100 calls by default,
# failing the calls in flight (bentoml#5540, #4971): keep one pool for a worker's life.
# Its access log would repeat the HTTP workers' one, line for line.
@bentoml.service(name="openimager-model", workers=TUNING.model_workers, traffic={"timeout": 60},
                 runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9},
                 logging={"access": {"enabled": False}})
class Predictor:
    """Class probabilities for batches of size x size RGB images, with the answering model."""

    # A class attribute so `bentoml build` packs the chosen model into the Bento.
    bento_model = declared_model()

    @bentoml.on_deployment
    def check_model() -> None:
        """Fail `bentoml serve` at once, with the reason, when there is no model."""
        locate(served_choice(Predictor.bento, Predictor.name))

    def __init__(self) -> None:
        self.lifecycle = Lifecycle.from_env()
        self.served: Served | None = None
        self.history: dict[int, dict] = {}  # every model served: answers that raced a swap
        self.load_error: str | None = None
        self.last_reload_error: dict | None = None
        self.failed: str | None = None  # a model that failed to load is not tried again
        self.drain = Drain()
        self.tasks: set[asyncio.Task] = set()

    @bentoml.on_startup
    async def start(self) -> None:
        """Drain on SIGTERM, and load the model in the background: this worker answers
        readiness and status at once instead of after the load."""
        drain_on_signals(self.drain, self.drain.model_done, self.lifecycle.grace_seconds + 2)
        task = asyncio.get_running_loop().create_task(self.keep_current())
        self.tasks.add(task)  # a reference, or the loop may collect the task

    @bentoml.on_shutdown
    async def stop(self) -> None:
        """Stop watching for promotions."""
        for task in self.tasks:
            task.cancel()

    async def __is_ready__(self) -> bool:
        return self.served is not None

    async def keep_current(self) -> None:
        """Load the chosen model, then every reload interval check for a newer promotion."""
        await anyio.to_thread.run_sync(configure_tensorflow, TUNING)
        while self.served is None:
            choice = await anyio.to_thread.run_sync(served_choice, Predictor.bento,
                                                    Predictor.name)
            try:
                identity = await anyio.to_thread.run_sync(identity_of, choice)
                self.swap(await anyio.to_thread.run_sync(load, choice, identity or "?"))
            except Exception as error:  # shown in /readyz, tried again
                self.load_error = f"{type(error).__name__}: {error}"
                log.exception("cannot load the model to serve")
                await asyncio.sleep(max(self.lifecycle.reload_seconds, 5))
        if not self.lifecycle.reload_seconds or self.served.lineage["source"] in PINNED:
            return
        while True:
            await asyncio.sleep(self.lifecycle.reload_seconds)
            await self.check_promotion()

    async def check_promotion(self) -> bool:
        """Swap in the model promoted since the last check, if any; True if one was."""
        choice = await anyio.to_thread.run_sync(served_choice, Predictor.bento, Predictor.name)
        identity = await anyio.to_thread.run_sync(identity_of, choice)
        if identity is None or identity in (self.served.identity, self.failed):
            return False
        log.info("newer model %s (%s): loading it beside %s", identity, choice.source,
                 self.served.identity)
        try:
            candidate = await anyio.to_thread.run_sync(load, choice, identity)
        except Exception as error:  # noqa: BLE001 - the old model keeps serving
            self.failed = identity
            self.last_reload_error = {
                "model": identity, "error": f"{type(error).__name__}: {error}",
                "at": datetime.now(UTC).isoformat(timespec="seconds")}
            log.error("not swapped in, still serving %s: %s", self.served.identity,
                      self.last_reload_error["error"])
            return False
        self.swap(candidate)
        return True

    def swap(self, served: Served) -> None:
        """Serve a loaded, warmed model from the next batch on (one assignment)."""
        previous = self.served
        self.history[served.key] = served.lineage
        self.served, self.load_error = served, None
        log.info("serving %s (%s)%s with %d TensorFlow threads", served.identity,
                 served.lineage["source"], f", replacing {previous.identity}" if previous else "",
                 TUNING.intra_op_threads)

    def predict_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (n, classes) for uint8 pixels (n, size, size, 3), and last the key of
        the model that answered."""
        served = self.served  # read once: a swap during this batch does not change its model
        if served is None:
            raise bentoml.exceptions.ServiceUnavailable("the model is still loading")
        self.drain.last_request = time.monotonic()
        self.drain.in_flight += 1
        try:
            outputs = served.model.predict_on_batch(pixels)
        finally:
            self.drain.in_flight -= 1
            self.drain.last_request = time.monotonic()
        probs = probabilities(outputs, len(served.class_names)).astype(np.float32)
        return np.concatenate([probs, np.full((len(probs), 1), served.key, np.float32)], axis=1)

    @bentoml.api(batchable=True, max_batch_size=TUNING.max_batch_size,
                 max_latency_ms=TUNING.max_latency_ms)
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of prepared images (merged across requests); the
        last column is the answering model's key (see describe)."""
        return self.predict_batch(pixels)

    @bentoml.api
    async def describe(self, key: int | None = None) -> dict:
        """The lineage and input size of the model with this key, or of the served one."""
        if self.served is None:
            raise bentoml.exceptions.ServiceUnavailable("the model is still loading")
        if key is None or key == self.served.key:
            return self.served.lineage
        if key not in self.history:
            raise bentoml.exceptions.NotFound(f"no model with key {key} was served here")
        return self.history[key]

    @bentoml.api
    async def status(self) -> dict:
        """Whether the model is loaded, which one, and the last reload's error if any."""
        served = self.served
        return {
            "state": "ready" if served else ("failed" if self.load_error else "loading"),
            "model": served.lineage["tag"] if served else None,
            "model_key": served.key if served else None,
            "loaded_at": datetime.fromtimestamp(served.loaded_at, UTC).isoformat(
                timespec="seconds") if served else None,
            "load_error": self.load_error,
            "last_reload_error": self.last_reload_error,
            "reload_seconds": self.lifecycle.reload_seconds,
            "follows_promotions": bool(served and self.lifecycle.reload_seconds
                                       and served.lineage["source"] not in PINNED),
        }


json_output(Predictor)
