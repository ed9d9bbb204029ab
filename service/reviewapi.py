"""GET /review and GET /review/images/{name}: the review queue of kept uploads (service.review)
over HTTP, guarded by the feedback token since the images are users' uploads. Light to import
(the mounted app's routes): the queue itself is the service's, made in its worker."""

from __future__ import annotations

import logging
import re

import anyio
import bentoml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.feedback import error, guard, over_rate, unauthorized

log = logging.getLogger("openimager.service")
ORDERS = ("margin", "entropy", "disagreement")
MAX_LIMIT = 500
IMAGE_NAME = re.compile(r"[0-9a-f]{64}\.(jpg|png|webp|bmp|gif)")  # a kept upload's (fullmatch)
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp",
                 "bmp": "image/bmp", "gif": "image/gif"}
LOG_OFF = "the review queue is off because the prediction log is (OPENIMAGER_PREDICTION_LOG=false)"


def locked(request: Request) -> JSONResponse | None:
    """401 without the token when OPENIMAGER_FEEDBACK_TOKEN is set, else None."""
    policy, _ = guard()
    if policy.authorized(request.headers.get("authorization")):
        return None
    # Only refused requests spend the client's feedback tokens: the page loads many images
    # with the right one, and a wrong one is guessed no faster here than on /feedback.
    return over_rate(request) or unauthorized("the review queue")


def query(request: Request) -> tuple[str, int] | JSONResponse:
    """order and limit from the query string, or the 400 answer."""
    order = request.query_params.get("order", "margin")
    limit = request.query_params.get("limit", "50")
    if order not in ORDERS:
        return error(400, "bad_query", f"order {order!r} is not one of {', '.join(ORDERS)}")
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
        return error(400, "bad_query", f"limit {limit!r} is not a whole number from 1 to "
                     f"{MAX_LIMIT}")
    return order, int(limit)


async def review(request: Request) -> Response:
    """The kept uploads nobody labelled yet (one per image, its newest answer), in an order:
    `margin` (the default: the smallest gap between the top two probabilities first),
    `entropy` (the highest first) or `disagreement` (those the shadow replay's candidate
    answers differently first, then by margin); the first `limit` (50, at most 500). With
    OPENIMAGER_FEEDBACK_TOKEN set, it needs `Authorization: Bearer <token>`."""
    if (answer := locked(request)) is not None:
        return answer
    asked = query(request)
    if isinstance(asked, Response):
        return asked
    queue = bentoml.get_current_service().review
    if queue is None:
        return error(409, "prediction_log_off", LOG_OFF)
    try:
        body = await anyio.to_thread.run_sync(queue.answer, *asked)
    except Exception as failure:  # noqa: BLE001 - an unreadable log: say so, keep serving
        log.warning("review: cannot read the prediction log: %s", failure)
        return error(503, "log_unavailable", f"cannot read the prediction log: {failure}")
    return JSONResponse(body)


async def review_image(request: Request) -> Response:
    """A kept upload's bytes, by the file name in its review item's `image`."""
    if (answer := locked(request)) is not None:
        return answer
    name = request.path_params["name"]
    queue = bentoml.get_current_service().review
    if queue is None:
        return error(409, "prediction_log_off", LOG_OFF)
    try:
        data = await anyio.to_thread.run_sync(queue.image, name) if IMAGE_NAME.fullmatch(
            name) else None
    except Exception as failure:  # noqa: BLE001 - storage down: say so, keep serving
        log.warning("review: cannot read the kept upload %s: %s", name, failure)
        return error(503, "log_unavailable", f"cannot read the kept upload: {failure}")
    if data is None:
        return error(404, "unknown_image", f"no kept upload named {name!r}")
    # The bytes are a user's upload: never sniffed as anything but the image type it is.
    return Response(data, media_type=CONTENT_TYPES[name.rpartition(".")[2]], headers={
        "Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox"})
