"""BentoML service: POST /classify and /classify_batch, GET /model and the page at /ui.

`bentoml serve service.service:Classifier` starts OPENIMAGER_WORKERS worker processes; each
checks and decodes uploads and holds the model (service.predictor), which runs the prepared
images of concurrent requests as one batch.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import bentoml
from fastapi import FastAPI
from pydantic import Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)

from service.batcher import Overloaded
from service.config import Lifecycle, Limits, PredictionLogging, Tuning, min_confidence
from service.errorshape import ErrorShape
from service.feedback import feedback
from service.guard import UPLOAD_STATE, UploadGuard
from service.lifecycle import DRAIN, drain_on_signals
from service.lifecycle import Lifecycle as LifecycleMiddleware
from service.predictor import BATCH_METRIC, Predictor, json_output
from service.source import check_at_start, declared_model

with bentoml.importing():
    import numpy as np

    from model.predict import top_k
    from service.images import BadImage, Lanes, prepare_all
    from service.predlog import (
        Answered,
        PredictionLog,
        describe_all,
        new_request_id,
        small_uploads,
    )

Top = Annotated[int, Field(ge=1, le=Limits.max_top, description="how many labels to return")]
PAGE = Path(__file__).parent / "static" / "ui.html"
# Read when the service class is defined: BentoML needs the number in the decorator.
TUNING = Tuning.from_env()


async def model_info(request: Request) -> Response:
    """The served model's lineage (tag, classes with MIDs, data, code, scores, publication)
    and whether it follows promotions, with the last failed reload."""
    predictor = bentoml.get_current_service().predictor
    served, state = predictor.served, predictor.status()
    if served is None:
        return JSONResponse({"error": f"the model is {state['state']}", "code": state["state"],
                             "load_error": state["load_error"]},
                            status_code=503, headers={"Retry-After": "5"})
    keys = ("loaded_at", "reload_seconds", "follows_promotions", "last_reload_error")
    return JSONResponse({**served.lineage, **{k: state[k] for k in keys}})


async def page(request: Request) -> Response:
    """The classification page: one static file, no build step."""
    return FileResponse(PAGE, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


async def to_page(request: Request) -> Response:
    """/ui/ to /ui, where the page's relative URLs resolve to the API."""
    return RedirectResponse("../ui", status_code=308)


async def http_error(request: Request, error: Exception) -> Response:
    """Errors of these routes (405 for a wrong method) as JSON, like the API's."""
    status = getattr(error, "status_code", 500)
    return JSONResponse({"error": getattr(error, "detail", "error"), "code": f"http_{status}"},
                        status_code=status)


# Mounted at "/" below; BentoML matches these routes only, so its own stay intact. A FastAPI
# app (not a plain Starlette one) because BentoML 1.4 merges only a mounted FastAPI app's
# OpenAPI paths into /docs.json; its own /docs and /openapi.json are off (BentoML has both).
web_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None,
                  exception_handlers={HTTPException: http_error})
web_app.add_api_route(
    "/model", model_info, methods=["GET"], response_class=JSONResponse, tags=["Service APIs"],
    summary="The served model's lineage", description=inspect.getdoc(model_info),
    responses={200: {"description": "tag, classes (name, mid), image_size, architecture, "
                     "dataset_id, git_commit, metrics, package, registry, top_hash, "
                     "promoted_at, loaded_at, reload_seconds, follows_promotions, "
                     "last_reload_error",
                     "content": {"application/json": {"schema": {"type": "object"}}}},
               503: {"description": "the model is loading, or failed to load"}})
web_app.add_api_route(
    "/ui", page, methods=["GET"], response_class=HTMLResponse, tags=["Service APIs"],
    summary="The classification page", description=inspect.getdoc(page),
    responses={200: {"description": "an HTML page", "content": {"text/html": {}}}})
web_app.add_api_route("/ui/", to_page, methods=["GET"], include_in_schema=False)
web_app.add_api_route(
    "/feedback", feedback, methods=["POST"], response_class=JSONResponse,
    tags=["Service APIs"], summary="Correct one answer", description=inspect.getdoc(feedback),
    responses={200: {"description": "stored: request_id, label, model, stored",
                     "content": {"application/json": {"schema": {"type": "object"}}}},
               400: {"description": "a field is missing, or the label is not a class"},
               401: {"description": "OPENIMAGER_FEEDBACK_TOKEN is set and the request has "
                                    "no matching Authorization: Bearer token"},
               404: {"description": "no answered request has this id"},
               429: {"description": "this client sent too much feedback: Retry-After says "
                                    "when to try again"}})


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

    async def prepared(self, paths: list[Path]) -> np.ndarray:
        """Decode uploads in threads (a bounded number at once) into one uint8 batch."""
        served = self.predictor.served
        if served is None:
            raise bentoml.exceptions.ServiceUnavailable("the model is still loading")
        # Any size works (the model resizes inside); the served model's own avoids a resize.
        return await prepare_all(paths, served.image_size, self.limits, self._lanes)

    async def labelled(self, paths: list[Path], top: int, ctx: bentoml.Context,
                       start: float) -> tuple[list[list[dict]], dict[str, Any]]:
        """Top labels per image, or ([], error body) with ctx's status set (a 4xx for a bad
        upload, 503 when the model is overloaded); the answer's request ids in
        extra["request_ids"]."""
        try:
            pixels = await self.prepared(paths)
        except BadImage as error:
            ctx.response.status_code = error.status
            names = uploaded_names(ctx)
            name = names[error.index] if error.index < len(names) else None
            which = repr(name) if name else "the upload"
            where = f"image {error.index + 1} ({which})" if len(paths) > 1 else which
            return [], {"error": f"{where}: {error}", "code": error.code, "index": error.index,
                        "filename": name}
        try:
            # A swap may happen between requests: the answer names the model that computed it.
            probs, served = await self.predictor.predict(pixels)
        except Overloaded as error:
            ctx.response.status_code = 503
            ctx.response.headers["Retry-After"] = "1"
            return [], {"error": str(error), "code": "overloaded"}
        info, names = served.lineage, list(served.class_names)
        mids = {c["name"]: c["mid"] for c in info["classes"]}
        k = min(top, len(names))
        labels = [[{**entry, "mid": mids[entry["label"]]} for entry in top_k(p, names, k)]
                  for p in probs]
        seconds = time.perf_counter() - start
        ids = [new_request_id() for _ in paths]
        ctx.response.headers["X-Request-ID"] = ids[0]
        if self.predlog.enabled and (described := await self.described(paths)) is not None:
            endpoint = "classify_batch" if ctx.request.url.path.endswith("_batch") else "classify"
            self.predlog.add(Answered(datetime.now(UTC), endpoint, ids, described, info["tag"],
                                      served.class_names, probs, seconds * 1000,
                                      info["top_hash"]))
        # Calibrated probabilities (the temperature is inside the model): a low top one is an
        # answer the client should not act on alone.
        unsure = [bool(p.max() < self.min_confidence) for p in probs]
        return labels, {"model": info["tag"], "top_hash": info["top_hash"],
                        "seconds": round(seconds, 4), "request_ids": ids, "unsure": unsure}

    async def described(self, paths: list[Path]) -> list | None:
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
        """Classify one image: the most likely labels first, the model tag and the time taken."""
        start = time.perf_counter()
        labels, extra = await self.labelled([image], top, ctx, start)
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
        labels, extra = await self.labelled(images, top, ctx, start)
        if not labels:
            return extra
        names = uploaded_names(ctx)
        ids, unsure = extra.pop("request_ids"), extra.pop("unsure")
        results = [{"request_id": ids[i], "filename": names[i] if i < len(names) else None,
                    "labels": lab, "unsure": unsure[i]} for i, lab in enumerate(labels)]
        return {"results": results, **extra}


def uploaded_names(ctx: bentoml.Context) -> list[str]:
    """The uploaded files' names, in order, as the upload guard read them."""
    return list(getattr(ctx.request.state, UPLOAD_STATE, None) or [])


# Outermost: readiness at once, 503 while draining, requests in flight counted.
Classifier.add_asgi_middleware(LifecycleMiddleware)
# Checks every upload before BentoML parses it (see service.guard).
Classifier.add_asgi_middleware(UploadGuard)
# Innermost: BentoML's own error answers (invalid input) get a code, like every other error.
Classifier.add_asgi_middleware(ErrorShape)
json_output(Classifier)
