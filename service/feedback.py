"""POST /feedback: a user's correction of one answer, stored beside the prediction log."""

from __future__ import annotations

import json
import logging
from functools import cache

import anyio
import bentoml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.feedbackguard import FeedbackPolicy, TokenBucket, retry_after

log = logging.getLogger("openimager.service")
MAX_BODY = 64 * 1024
FIELDS = ("request_id", "label")


def error(status: int, code: str, message: str) -> JSONResponse:
    """The service's usual error shape."""
    return JSONResponse({"error": message, "code": code}, status_code=status)


@cache
def guard() -> tuple[FeedbackPolicy, TokenBucket]:
    """This worker's feedback policy and its clients' buckets, read once."""
    policy = FeedbackPolicy.from_env()
    return policy, TokenBucket(policy.per_minute, policy.burst)


def refused(request: Request) -> JSONResponse | None:
    """429 when this client (its remote address) is over its rate, 401 without the token;
    None when the request may go on. The rate counts refused tokens too (no guessing)."""
    policy, _ = guard()
    if (answer := over_rate(request)) is not None:
        return answer
    if not policy.authorized(request.headers.get("authorization")):
        return unauthorized("feedback")
    return None


def over_rate(request: Request) -> JSONResponse | None:
    """Take one of this client's tokens: 429 when it has none left, else None."""
    policy, buckets = guard()
    client = request.client.host if request.client else "unknown"
    wait = buckets.take(client)
    if wait <= 0:
        return None
    answer = error(429, "rate_limited", f"too much feedback from {client}: at most "
                   f"{policy.per_minute:g} a minute (bursts of {policy.burst:g})")
    answer.headers["Retry-After"] = retry_after(wait)
    return answer


def unauthorized(what: str) -> JSONResponse:
    """401 for a request without the service's token."""
    answer = error(401, "unauthorized", f"{what} needs the service's token: send "
                   "Authorization: Bearer <OPENIMAGER_FEEDBACK_TOKEN>")
    answer.headers["WWW-Authenticate"] = "Bearer"
    return answer


async def fields(request: Request) -> dict[str, str] | JSONResponse:
    """request_id and label from a JSON object or form fields, or the 4xx answer."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        return error(413, "body_too_large", f"the feedback body is over {MAX_BODY} bytes")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind == "application/json":
            body = json.loads(await request.body())
        elif kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
            body = dict(await request.form())
        else:
            return error(415, "unsupported_media_type", "send request_id and label as JSON "
                         "or form fields")
    except (ValueError, AssertionError):  # bad JSON or a malformed form
        return error(400, "malformed_body", "the body is not valid JSON or form data")
    if not isinstance(body, dict):
        return error(400, "malformed_body", 'send a JSON object: {"request_id": ..., '
                     '"label": ...}')
    values = {name: body.get(name) for name in FIELDS}
    missing = [name for name, value in values.items()
               if not isinstance(value, str) or not value.strip()]
    if missing:
        return error(400, "missing_field", f"missing or empty: {', '.join(missing)} (send "
                     "the request_id of a /classify answer and the right label)")
    return {name: value.strip() for name, value in values.items()}


def canonical(label: str, classes: list[str]) -> str:
    """The class name label means, in any case ("hamburger" is "Hamburger"), as the command
    line takes class names; label itself when no class matches."""
    if label in classes:
        return label
    matches = [name for name in classes if name.casefold() == label.casefold()]
    return matches[0] if len(matches) == 1 else label


async def feedback(request: Request) -> Response:
    """Store the right label for an answered image: request_id (from the /classify answer)
    and label (one of the classes of the model that answered). With OPENIMAGER_FEEDBACK_TOKEN
    set, only requests with `Authorization: Bearer <token>` are taken; each client address
    may send OPENIMAGER_FEEDBACK_PER_MINUTE (30) with bursts of OPENIMAGER_FEEDBACK_BURST (10)."""
    if (answer := refused(request)) is not None:
        return answer
    got = await fields(request)
    if isinstance(got, Response):
        return got
    predlog = bentoml.get_current_service().predlog
    if not predlog.enabled:
        return error(409, "prediction_log_off", "feedback is off because the prediction log "
                     "is (OPENIMAGER_PREDICTION_LOG=false)")
    request_id, label = got["request_id"], got["label"]
    try:
        found = await predlog.find(request_id)
    except Exception as failure:  # noqa: BLE001 - an unreadable log: say so, keep serving
        log.warning("feedback: cannot search the prediction log: %s", failure)
        return error(503, "log_unavailable", f"cannot read the prediction log: {failure}")
    if found is None:
        return error(404, "unknown_request", f"no answered request with id {request_id!r} in "
                     "the prediction log")
    model, classes = found
    label = canonical(label, classes)
    if label not in classes:
        return error(400, "unknown_label", f"label {label!r} is not a class of {model}: "
                     f"pick one of {', '.join(classes)}")
    try:
        await anyio.to_thread.run_sync(predlog.feedback, request_id, label, model)
    except Exception as failure:  # noqa: BLE001 - storage down or full
        log.warning("feedback not stored in %s: %s", predlog.store, failure)
        return error(503, "feedback_not_stored", f"the feedback could not be stored: "
                     f"{failure}")
    return JSONResponse({"request_id": request_id, "label": label, "model": model,
                         "stored": True})
