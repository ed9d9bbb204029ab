"""The model inside each worker: loaded in the background, batched across requests,
replaced without a failed request when a newer one is promoted (service.swap).

One process per worker holds the model and batches its own requests (service.batcher):
measured against BentoML's two-process layout (HTTP workers calling a separate model service
over loopback), it answers about 1.4 times the requests for half the CPU outside the model
(docs/serving.md). TensorFlow is imported when the model loads, not with this module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any

import bentoml

from service.batcher import Batcher
from service.config import Lifecycle, Tuning
from service.registry import RegistryError
from service.source import resolved, served_choice
from service.swap import PINNED, Served, identity_of, load

with bentoml.importing():
    import anyio
    import numpy as np

    from model.predict import probabilities

log = logging.getLogger("openimager.service")
BATCH_METRIC = "openimager_batch_size"  # images per model call, on /metrics


def json_output(service: bentoml.Service) -> None:
    """Declare every API's answers JSON, once."""
    # Else BentoML derives the media type from a JSON schema it builds for every response:
    # a tenth of a worker's CPU.
    for api in service.apis.values():
        api.output_spec.media_type = "application/json"


def promoted_again(served: Served, promotion: dict | None) -> Served:
    """A model swapped in again, with the time of its new promotion (a rollback's)."""
    again = promotion.get("promoted_at") if promotion and \
        promotion.get("tag") == served.lineage["tag"] else None
    return dataclasses.replace(served, lineage={**served.lineage, "promoted_at": again})


def configure_tensorflow(tuning: Tuning) -> None:
    """Bound TensorFlow's thread pools so workers do not oversubscribe the cores."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(tuning.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(tuning.inter_op_threads)


class Predictor:
    """Class probabilities for batches of size x size RGB images, with the answering model."""

    def __init__(self, tuning: Tuning, lifecycle: Lifecycle, bento: object | None,
                 service_name: str, observe: Any = None) -> None:
        self.tuning, self.lifecycle = tuning, lifecycle
        self.bento, self.service_name = bento, service_name
        self.served: Served | None = None
        # The model the last swap replaced stays loaded: a rollback to it swaps at once.
        self.replaced: Served | None = None
        self.load_error: str | None = None
        self.last_reload_error: dict | None = None
        self.failed: str | None = None  # a model that failed to load is not tried again
        self.batcher = Batcher(self.predict_batch, tuning.max_batch_size,
                               tuning.max_latency_ms / 1000, observe)
        self.tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        """Load the model in the background: the worker answers readiness at once."""
        task = asyncio.get_running_loop().create_task(self.keep_current())
        self.tasks.add(task)  # a reference, or the loop may collect the task

    def stop(self) -> None:
        """Stop watching for promotions."""
        for task in self.tasks:
            task.cancel()

    def choice(self) -> Any:
        """The model to serve now; a followed registry is read here (RegistryError)."""
        return resolved(served_choice(self.bento, self.service_name))

    async def keep_current(self) -> None:
        """Load the chosen model, then every reload interval check for a newer promotion."""
        await anyio.to_thread.run_sync(configure_tensorflow, self.tuning)
        while self.served is None:
            try:
                choice = await anyio.to_thread.run_sync(self.choice)
                identity = await anyio.to_thread.run_sync(identity_of, choice)
                self.swap(await anyio.to_thread.run_sync(load, choice, identity or "?"))
            except Exception as error:  # shown in /readyz, tried again
                self.load_error = f"{type(error).__name__}: {error}"
                if isinstance(error, RegistryError):  # the reason is all there is to say
                    log.error("cannot load the model to serve: %s", error)
                else:
                    log.exception("cannot load the model to serve")
                await asyncio.sleep(max(self.lifecycle.reload_seconds, 5))
        if not self.lifecycle.reload_seconds or self.served.lineage["source"] in PINNED:
            return
        while True:
            await asyncio.sleep(self.lifecycle.reload_seconds)
            await self.check_promotion()

    async def check_promotion(self) -> bool:
        """Swap in the model promoted since the last check, if any; True if one was."""
        try:
            choice = await anyio.to_thread.run_sync(self.choice)
            identity = await anyio.to_thread.run_sync(identity_of, choice)
        except Exception as error:  # noqa: BLE001 - e.g. the registry is unreachable: keep on
            self.reload_failed(None, error)
            return False
        if identity is None or identity in (self.served.identity, self.failed):
            return False
        if self.replaced is not None and identity == self.replaced.identity:
            log.info("back to %s (%s): still loaded", identity, choice.source)
            self.swap(promoted_again(self.replaced, choice.promotion))
            return True
        log.info("newer model %s (%s): loading it beside %s", identity, choice.source,
                 self.served.identity)
        try:
            candidate = await anyio.to_thread.run_sync(load, choice, identity)
        except Exception as error:  # noqa: BLE001 - the old model keeps serving
            if not isinstance(error, RegistryError):  # a fetch is tried again, a load is not
                self.failed = identity
            self.reload_failed(identity, error)
            return False
        self.swap(candidate)
        return True

    def reload_failed(self, identity: str | None, error: Exception) -> None:
        """Keep serving the current model, and say why in the status's last_reload_error."""
        self.last_reload_error = {
            "model": identity, "error": f"{type(error).__name__}: {error}",
            "at": datetime.now(UTC).isoformat(timespec="seconds")}
        log.error("not swapped in, still serving %s: %s", self.served.identity,
                  self.last_reload_error["error"])

    def swap(self, served: Served) -> None:
        """Serve a loaded, warmed model from the next batch on (one assignment)."""
        previous = self.served
        self.served, self.load_error = served, None
        self.replaced = previous
        log.info("serving %s (%s, revision %s)%s with %d TensorFlow threads", served.identity,
                 served.lineage["source"], served.lineage.get("top_hash"),
                 f", replacing {previous.identity}" if previous else "",
                 self.tuning.intra_op_threads)

    def predict_batch(self, pixels: np.ndarray) -> tuple[np.ndarray, Served]:
        """Probabilities (n, classes) for uint8 pixels (n, size, size, 3), and the model that
        computed them."""
        served = self.served  # read once: a swap during this batch does not change its model
        if served is None:
            raise bentoml.exceptions.ServiceUnavailable("the model is still loading")
        outputs = served.model.predict_on_batch(pixels)
        return probabilities(outputs, len(served.class_names)), served

    async def predict(self, pixels: np.ndarray) -> tuple[np.ndarray, Served]:
        """Probabilities for these images, batched with other requests', and the model."""
        return await self.batcher(pixels)

    def status(self) -> dict:
        """Whether the model is loaded, which one, and the last reload's error if any."""
        served = self.served
        return {
            "state": "ready" if served else ("failed" if self.load_error else "loading"),
            "model": served.lineage["tag"] if served else None,
            "top_hash": served.lineage.get("top_hash") if served else None,
            "loaded_at": datetime.fromtimestamp(served.loaded_at, UTC).isoformat(
                timespec="seconds") if served else None,
            "load_error": self.load_error,
            "last_reload_error": self.last_reload_error,
            "reload_seconds": self.lifecycle.reload_seconds,
            "follows_promotions": bool(served and self.lifecycle.reload_seconds
                                       and served.lineage["source"] not in PINNED),
        }
