"""The app mounted beside BentoML's APIs: GET /model, the page at /ui, POST /feedback, the
review queue (GET /review and its images), and POST /classify with the image as the request
body (reached through service.rawbody)."""

from __future__ import annotations

import inspect
from pathlib import Path

import bentoml
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)

from service.feedback import feedback
from service.rawbody import TOP_STATE, Reply
from service.reviewapi import MAX_LIMIT, ORDERS, review, review_image

PAGE = Path(__file__).parent / "static" / "ui.html"


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

TOKEN_401 = {"description": "OPENIMAGER_FEEDBACK_TOKEN is set and the request has no matching "
                            "Authorization: Bearer token"}
LOG_OFF_409 = {"description": "the prediction log is off (OPENIMAGER_PREDICTION_LOG=false)"}
web_app.add_api_route(
    "/review", review, methods=["GET"], response_class=JSONResponse, tags=["Service APIs"],
    summary="The kept uploads to label, least certain first", description=inspect.getdoc(review),
    openapi_extra={"parameters": [
        {"name": "order", "in": "query", "required": False,
         "schema": {"type": "string", "enum": list(ORDERS), "default": "margin"}},
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}}]},
    responses={200: {"description": "items (request_id, sha256, image, time, model, top_hash, "
                     "classes, labels, top_label, top_probability, margin, entropy, "
                     "disagreement), total, order, shadow",
                     "content": {"application/json": {"schema": {"type": "object"}}}},
               400: {"description": "order or limit is not one of the allowed values"},
               401: TOKEN_401, 409: LOG_OFF_409})
web_app.add_api_route(
    "/review/images/{name}", review_image, methods=["GET"], response_class=Response,
    tags=["Service APIs"],
    summary="A kept upload of the review queue", description=inspect.getdoc(review_image),
    openapi_extra={"parameters": [{"name": "name", "in": "path", "required": True,
                                   "schema": {"type": "string"}}]},
    responses={200: {"description": "the image's bytes",
                     "content": {f"image/{kind}": {} for kind in
                                 ("jpeg", "png", "webp", "bmp", "gif")}},
               401: TOKEN_401, 404: {"description": "no kept upload has this name"},
               409: LOG_OFF_409})


async def classify_body(request: Request) -> Response:
    """Classify the image sent as the request body: the same answer and errors as the form."""
    reply = Reply()
    top = getattr(request.state, TOP_STATE, 3)  # checked by service.rawbody.RawBody
    answer = await bentoml.get_current_service().answer_one(await request.body(), None, top,
                                                             reply)
    return JSONResponse(answer, status_code=reply.status_code, headers=reply.headers)


# Its endpoint is called by service.rawbody.RawBody (BentoML routes /classify to its API
# first); the route gives /docs.json its entry, both forms (service.rawbody.document_forms).
web_app.add_api_route("/classify", classify_body, methods=["POST"], response_class=JSONResponse,
                      tags=["Service APIs"], summary="Classify one image")
