"""Every error answer in the service's shape, {"error": "what and where", "code": ...}.

BentoML answers an API's invalid input itself, before the API runs: 400 with
{"error": "1 validation error for Input", "detail": [...]} (and other 4xx as [{"error": ...}]),
without a code. This middleware rewrites those answers: the error names each bad field and what
is wrong with it, the code says what kind of error it is, and pydantic's detail stays.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

INVALID_INPUT = "invalid_input"  # a field BentoML's input validation refused


def field_problems(detail: list) -> str:
    """'top: Input should be greater than or equal to 1' for each item of pydantic's detail."""
    problems = []
    for item in detail:
        if not isinstance(item, dict):
            continue
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        problems.append(f"{where}: {item.get('msg', 'invalid')}" if where else
                        str(item.get("msg", "invalid")))
    return "; ".join(problems)


def reshaped(body: bytes, status: int) -> bytes | None:
    """The body in the service's error shape, or None when it has that shape (or is none)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]  # BentoML's other 4xx answers are a one-item list
    if not isinstance(data, dict) or "code" in data or "error" not in data:
        return None
    detail = data.get("detail")
    if isinstance(detail, list) and (problems := field_problems(detail)):
        shaped = {"error": f"invalid input: {problems}", "code": INVALID_INPUT, "detail": detail}
    else:
        shaped = {**data, "code": f"http_{status}"}
    return json.dumps(shaped).encode()


class ErrorShape:
    """ASGI middleware: give BentoML's own 4xx JSON answers a code and a readable error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if 400 <= message["status"] < 500 and headers.get(
                        b"content-type", b"").startswith(b"application/json"):
                    held["start"], held["body"] = message, b""
                    return
            elif message["type"] == "http.response.body" and "start" in held:
                held["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                start, body = held.pop("start"), held.pop("body")
                body = reshaped(body, start["status"]) or body
                headers = [(k, v) for k, v in start.get("headers", [])
                           if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers,
                                                 (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, sending)
