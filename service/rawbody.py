"""POST /classify with the image as the request body, beside the multipart form.

BentoML routes a path to one handler, its API, which parses every upload as a multipart form
and spools it to a temporary file: about 1 ms of CPU a request, more than the transfer model
takes for an image. So this ASGI middleware sits in front of BentoML's router (inside the
lifecycle middleware, before the upload guard): a POST to /classify whose Content-Type is an
image type (or application/octet-stream) is read within the upload limit, its query checked
(`top`, as the form's field), and handed to the endpoint of the mounted app's /classify route
(service.web), which answers through the same core as the form (Classifier.answer_one).
Everything else, the form included, goes on to the upload guard and BentoML as before. The
endpoint is called directly: FastAPI's own dispatch would add about 0.07 ms a request (its
middleware stack, routing, request wrapping), and the route is there for /docs.json.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qsl

from pydantic import Field, ValidationError, create_model
from python_multipart.multipart import parse_options_header
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.config import Limits
from service.errorshape import INVALID_INPUT, field_problems
from service.guard import (
    TOP_VALUE,
    ASGIApp,
    ClientGone,
    Receive,
    Rejected,
    Rule,
    Scope,
    Send,
    read_body,
    replay,
)

Top = Annotated[int, Field(ge=1, le=Limits.max_top, description="how many labels to return")]
RAW_PATHS = ("/classify",)
TOP_STATE = "openimager_top"  # scope["state"] key: the checked `top` of a raw body
Query = create_model("Input", top=(Top, 3))  # BentoML's name for an API's input model


def is_raw(media_type: bytes) -> bool:
    """Whether a request of this media type carries the image as its body. The subtype is not
    trusted: the decoder reads the format from the bytes, as it does for a form's file."""
    return media_type.startswith(b"image/") or media_type == b"application/octet-stream"


@dataclass
class Reply:
    """The status and headers of an answer, set by the core as it goes (as on BentoML's
    ctx.response for the form)."""

    status_code: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def checked_top(query: bytes) -> int:
    """`top` from the query string, checked as the form's field is; Rejected if bad."""
    tops = []
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name != "top":
            raise Rejected(400, "unexpected_field", f"unexpected query parameter '{name}': "
                           "send the image as the body and top as the only query parameter")
        tops.append(value)
    if not tops:
        return 3
    if len(tops) > 1 or not TOP_VALUE.fullmatch(tops[0].strip()):
        raise Rejected(400, "bad_field", "query parameter 'top' must be one whole number")
    try:
        return Query(top=int(tops[0])).top
    except ValidationError as error:
        detail = error.errors(include_context=False, include_input=False)
        raise Invalid(detail) from None


class Invalid(Rejected):
    """A value out of range: BentoML's invalid-input answer, pydantic's detail included."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(400, INVALID_INPUT, f"invalid input: {field_problems(detail)}")
        self.detail = detail

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, "code": self.code, "detail": self.detail},
                            status_code=self.status)


class RawBody:
    """ASGI middleware: hand raw image bodies on RAW_PATHS to handler, the rest to app."""

    def __init__(self, app: ASGIApp, handler: Callable[[Request], Awaitable[Response]],
                 limits: Limits | None = None) -> None:
        self.app, self.handler = app, handler
        # Built when the server builds its app, in each worker, never at import.
        size = (limits or Limits.from_env()).max_upload_bytes
        self.rule = Rule("image", 1, size, size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in RAW_PATHS or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        media_type, _ = parse_options_header(headers.get(b"content-type", b"").decode("latin-1"))
        if not is_raw(media_type):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, headers, self.rule)
            if not body:
                raise Rejected(400, "empty_file", "the request body is empty: send the image's "
                               "bytes")
            top = checked_top(scope.get("query_string", b""))
        except Rejected as error:
            await error.response()(scope, receive, send)
            return
        except ClientGone:
            return
        scope = {**scope, "state": {**scope.get("state", {}), TOP_STATE: top}}
        receive = replay(body, receive)
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def document_forms(service: Any, route: Any) -> None:
    """The mounted /classify route's OpenAPI entry (which replaces the API's in /docs.json):
    the form as BentoML describes it beside the raw body, and the API's answers."""
    from bentoml._internal.utils.cattr import bentoml_cattr

    api = service.apis["classify"]
    form = bentoml_cattr.unstructure(api.openapi_request())["content"]
    binary = {"schema": {"type": "string", "format": "binary"}}
    raw = dict.fromkeys(("image/jpeg", "image/png", "image/webp", "image/*",
                         "application/octet-stream"), binary)
    top = {"name": "top", "in": "query", "required": False, "schema": {
        "type": "integer", "minimum": 1, "maximum": Limits.max_top, "default": 3},
        "description": "how many labels to return, with the image as the body (a form sends "
                       "top as a field)"}
    route.description = ("Classify one image: the most likely labels first, the model tag and "
                         "the time taken. Send the image as the request body (Content-Type "
                         "image/jpeg, image/png, ...; top in the query), the faster form, or as "
                         "the multipart field `image` (top as a field).")
    route.openapi_extra = {
        "operationId": f"{service.name}__classify", "x-bentoml-name": "classify",
        "parameters": [top],
        "requestBody": {"required": True, "content": {**raw, **form}},
        "responses": {"200": bentoml_cattr.unstructure(api.openapi_response()),
                      "400": {"description": "not an image, or a bad field or parameter"},
                      "413": {"description": "over the upload or pixel limits"},
                      "415": {"description": "neither an image body nor a multipart form"},
                      "503": {"description": "loading, overloaded or shutting down: retry"}}}
