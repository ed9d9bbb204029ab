"""BentoML service: POST /classify and /classify_batch, GET /model, the page at /ui and the
review queue at /review.

`bentoml serve service.service:Classifier` starts OPENIMAGER_WORKERS worker processes; each
checks and decodes uploads and holds the model (service.predictor), which runs the prepared
images of concurrent requests as one batch.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import Field

from service.batcher import Overloaded
from service.config import Lifecycle, Limits, PredictionLogging, Tuning, min_confidence
from service.errorshape import ErrorShape
from service.guard import UPLOAD_STATE, UploadGuard
from service.lifecycle import DRAIN, drain_on_signals
from service.lifecycle import Lifecycle as LifecycleMiddleware
from service.predictor import BATCH_METRIC, Predictor, json_output
from service.rawbody import RawBody, Top, document_forms
from service.source import check_at_start, declared_model
from service.web import classify_body, web_app

with bentoml.importing():
    import numpy as np

    from model.predict import top_k
    from service.images import BadImage, Source
    from service.lanes import Lanes, prepare_all
    from service.predlog import (
        Answered,
        PredictionLog,
        describe_all,
        new_request_id,
        small_uploads,
    )
    from service.review import ReviewQueue

# Read when the service class is defined: BentoML needs the number in the decorator.
TUNING = Tuning.from_env()


@bentoml.asgi_app(web_app, path="/")
@bentoml.service(name="openimager", workers=TUNING.workers, traffic={"timeout": 60})
class Classifier:
    """Classifies uploaded images with the served openimager model."""

    # A class attribute so `bentoml build` packs the chosen model into the Bento.
    bento_model = declared_model()

    @bentoml.on_deployment
    def check_model() -> None:
        """Fail `bentoml serve` at once, with the reason, when there is no model."""
        check_at_start(Classifier.bento, Classifier.name)

    def __init__(self) -> None:
        self.limits = Limits.from_env()
        self.lifecycle = Lifecycle.from_env()
        sizes = bentoml.metrics.Histogram(name=BATCH_METRIC, documentation="images per model "
                                          "call", buckets=(1, 2, 4, 8, 16, 32, 64))
        self.predictor = Predictor(TUNING, self.lifecycle, Classifier.bento, Classifier.name,
                                   sizes.observe)
        self._lanes = Lanes(TUNING.decode_threads, TUNING.large_decode_threads)
        self.predlog = PredictionLog(PredictionLogging.from_env())
        # GET /review's index of the log's kept uploads, this worker's own
        self.review = ReviewQueue(self.predlog.store) if self.predlog.enabled else None
        self.min_confidence = min_confidence()

    @bentoml.on_startup
    async def start(self) -> None:
        """Load the model in the background (readiness answers at once), and on SIGTERM: new
        requests get 503, those in flight finish, then the worker exits."""
        drain_on_signals(DRAIN, self.lifecycle.grace_seconds,
                         self.lifecycle.drain_delay_seconds)
        self.predictor.start()
        self.predlog.start()

    @bentoml.on_shutdown
    async def stop(self) -> None:
        """Stop following promotions; write the prediction log's last rows (after the
        requests in flight finished)."""
        self.predictor.stop()
        await asyncio.to_thread(self.predlog.close)

    async def model_state(self) -> dict:
        """The model's state: loading, ready or failed, and which model."""
        return self.predictor.status()

    async def prepared(self, paths: list[Source]) -> np.ndarray:
        """Decode uploads in threads (a bounded number at once) into one uint8 batch."""
        served = self.predictor.served
        if served is None:
            raise bentoml.exceptions.ServiceUnavailable("the model is still loading")
        # Any size works (the model resizes inside); the served model's own avoids a resize.
        return await prepare_all(paths, served.image_size, self.limits, self._lanes)

    async def labelled(self, paths: list[Source], top: int, response: Any, start: float,
                       names: list[str], endpoint: str) -> tuple[list[list[dict]], dict[str, Any]]:
        """Top labels per image, or ([], error body) with response's status set (a 4xx for a
        bad upload, 503 when the model is overloaded); the answer's request ids in
        extra["request_ids"]. Both request forms answer here: response is BentoML's
        ctx.response for a form, a service.rawbody.Reply for a raw body."""
        try:
            pixels = await self.prepared(paths)
        except BadImage as error:
            response.status_code = error.status
            name = names[error.index] if error.index < len(names) else None
            which = repr(name) if name else "the upload"
            where = f"image {error.index + 1} ({which})" if len(paths) > 1 else which
            return [], {"error": f"{where}: {error}", "code": error.code, "index": error.index,
                        "filename": name}
        try:
            # A swap may happen between requests: the answer names the model that computed it.
            probs, served = await self.predictor.predict(pixels)
        except Overloaded as error:
            response.status_code = 503
            response.headers["Retry-After"] = "1"
            return [], {"error": str(error), "code": "overloaded"}
        info, names = served.lineage, list(served.class_names)
        mids = {c["name"]: c["mid"] for c in info["classes"]}
        k = min(top, len(names))
        labels = [[{**entry, "mid": mids[entry["label"]]} for entry in top_k(p, names, k)]
                  for p in probs]
        seconds = time.perf_counter() - start
        ids = [new_request_id() for _ in paths]
        response.headers["X-Request-ID"] = ids[0]
        if self.predlog.enabled and (described := await self.described(paths)) is not None:
            self.predlog.add(Answered(datetime.now(UTC), endpoint, ids, described, info["tag"],
                                      served.class_names, probs, seconds * 1000,
                                      info["top_hash"]))
        # Calibrated probabilities (the temperature is inside the model): a low top one is an
        # answer the client should not act on alone.
        unsure = [bool(p.max() < self.min_confidence) for p in probs]
        return labels, {"model": info["tag"], "top_hash": info["top_hash"],
                        "seconds": round(seconds, 4), "request_ids": ids, "unsure": unsure}

    async def described(self, paths: list[Source]) -> list | None:
        """The log's view of answered uploads (hash, header, sampled bytes)."""
        rate = self.predlog.settings.sample_rate
        if small_uploads(paths):
            return describe_all(paths, rate)
        return await asyncio.to_thread(describe_all, paths, rate)

    @bentoml.api(route="/classify")
    async def classify(
        self,
        image: Annotated[Path, Field(description="a JPEG, PNG, WebP, BMP or GIF file")],
        ctx: bentoml.Context,
        top: Top = 3,
    ) -> dict:
        """Classify one image: the most likely labels first, the model tag and the time taken.
        The image may also be sent as the request body (service.rawbody), the faster form."""
        return await self.answer_one(image, (uploaded_names(ctx) or [None])[0], top,
                                     ctx.response)

    async def answer_one(self, image: Source, name: str | None, top: int, response: Any
                         ) -> dict:
        """The answer of /classify to either form: a file of the form, or a raw body."""
        start = time.perf_counter()
        labels, extra = await self.labelled([image], top, response, start,
                                            [name] if name else [], "classify")
        if not labels:
            return extra
        return {"request_id": extra.pop("request_ids")[0], "labels": labels[0],
                "unsure": extra.pop("unsure")[0], **extra}

    @bentoml.api(route="/classify_batch")
    async def classify_batch(
        self,
        images: Annotated[list[Path], Field(description="several image files, one field each")],
        ctx: bentoml.Context,
        top: Top = 3,
    ) -> dict:
        """Classify several images in one request; results keep the upload order."""
        start = time.perf_counter()
        names = uploaded_names(ctx)
        labels, extra = await self.labelled(images, top, ctx.response, start, names,
                                            "classify_batch")
        if not labels:
            return extra
        ids, unsure = extra.pop("request_ids"), extra.pop("unsure")
        results = [{"request_id": ids[i], "filename": names[i] if i < len(names) else None,
                    "labels": lab, "unsure": unsure[i]} for i, lab in enumerate(labels)]
        return {"results": results, **extra}


def uploaded_names(ctx: bentoml.Context) -> list[str]:
    """The uploaded files' names, in order, as the upload guard read them."""
    return list(getattr(ctx.request.state, UPLOAD_STATE, None) or [])


# Outermost: readiness at once, 503 while draining, requests in flight counted.
Classifier.add_asgi_middleware(LifecycleMiddleware)
# Raw image bodies on /classify go to the mounted app's route, bypassing BentoML's form parsing.
Classifier.add_asgi_middleware(RawBody, handler=classify_body)
# Checks every upload before BentoML parses it (see service.guard).
Classifier.add_asgi_middleware(UploadGuard)
# Innermost: BentoML's own error answers (invalid input) get a code, like every other error.
Classifier.add_asgi_middleware(ErrorShape)
json_output(Classifier)
document_forms(Classifier, next(r for r in web_app.routes if r.endpoint is classify_body))
