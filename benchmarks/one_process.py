"""A one-process layout of the service, for benchmarks/layout.py to weigh against the real one.

Each HTTP worker holds the model and batches its own requests: while one batch runs in a
thread, the requests that arrive wait, and go together in the next (an in-process
micro-batcher, no inter-process call). Same upload guard, readiness middleware, decode and
answer as service.service; no hot swap, no draining, no prediction log.

    OPENIMAGER_MODEL_TAG=openimager-classifier:... bentoml serve benchmarks.one_process:OneProcess
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import bentoml

from service.config import Limits, Tuning
from service.guard import UploadGuard
from service.lifecycle import Lifecycle as LifecycleMiddleware
from service.predictor import json_output

with bentoml.importing():
    import anyio
    import numpy as np

    from model.predict import probabilities, top_k
    from service.images import Lanes, prepare_all
    from service.source import choose
    from service.swap import identity_of, load

TUNING = Tuning.from_env()
BATCH_METRIC = "one_process_batch_size"  # read by benchmarks/serve.py, like BentoML's own


class Batcher:
    """Runs model calls one at a time; what arrives meanwhile forms the next batch."""

    def __init__(self, predict: Any, max_size: int) -> None:
        self.predict, self.max_size = predict, max_size
        self.waiting: list[tuple[np.ndarray, asyncio.Future]] = []
        self.running = False
        self.sizes = bentoml.metrics.Histogram(
            name=BATCH_METRIC, documentation="images per model call",
            buckets=(1, 2, 4, 8, 16, 32))

    async def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """The model's outputs for a batch of prepared images, run with others' images."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((pixels, future))
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self.drain())
        return await future

    async def drain(self) -> None:
        try:
            while self.waiting:
                taken, count = [], 0
                while self.waiting and (not taken or count + len(self.waiting[0][0])
                                        <= self.max_size):
                    taken.append(self.waiting.pop(0))
                    count += len(taken[-1][0])
                batch = np.concatenate([pixels for pixels, _ in taken])
                self.sizes.observe(len(batch))
                try:
                    out = np.asarray(await anyio.to_thread.run_sync(self.predict, batch))
                except Exception as error:  # noqa: BLE001 - every waiter gets it
                    for _, future in taken:
                        future.set_exception(error)
                    continue
                start = 0
                for pixels, future in taken:
                    future.set_result(out[start:start + len(pixels)])
                    start += len(pixels)
        finally:
            self.running = False


@bentoml.service(name="openimager-one", workers=TUNING.workers, traffic={"timeout": 60})
class OneProcess:
    """Classifies uploaded images with the model held in this worker."""

    def __init__(self) -> None:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(TUNING.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(TUNING.inter_op_threads)
        choice = choose()
        self.served = load(choice, identity_of(choice) or "?")
        self.limits = Limits.from_env()
        self.lanes = Lanes(TUNING.decode_threads, TUNING.large_decode_threads)
        self.batcher = Batcher(self.served.model.predict_on_batch, TUNING.max_batch_size)

    async def model_state(self) -> dict:
        """Always ready: the model loaded before this worker took requests."""
        return {"state": "ready", "model": self.served.lineage["tag"]}

    @bentoml.api(route="/classify")
    async def classify(self, image: Path, top: int = 3) -> dict:
        """Classify one image."""
        start = time.perf_counter()
        served = self.served
        pixels = await prepare_all([image], served.image_size, self.limits, self.lanes)
        probs = probabilities(await self.batcher(pixels), len(served.class_names))
        names = list(served.class_names)
        return {"labels": top_k(probs[0], names, min(top, len(names))),
                "model": served.lineage["tag"], "seconds": round(time.perf_counter() - start, 4)}


OneProcess.add_asgi_middleware(LifecycleMiddleware)
OneProcess.add_asgi_middleware(UploadGuard)
json_output(OneProcess)
