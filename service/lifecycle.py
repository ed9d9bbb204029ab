"""Shutdown without failing a request: drain on SIGTERM, then hand over to uvicorn; readiness
that answers at once.

Each worker wraps the SIGTERM handler uvicorn installed before the service started: /readyz
fails at once, requests are still answered as usual for OPENIMAGER_DRAIN_DELAY_SECONDS (the
time a load balancer or Kubernetes takes to stop sending new ones here), then it stops taking
new work (503 with Retry-After), finishes what is in flight (its model batches included), and
lets uvicorn shut down. OPENIMAGER_GRACE_SECONDS caps the whole wait.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("openimager.service")

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A worker answers 503 (readiness included) at least this long before it stops, for load
# balancers to notice: once it stops, the port accepts connections nobody serves until the
# server exits.
LINGER_SECONDS = 1.0
FORCE_AFTER_SECONDS = 5.0  # after handing over, uvicorn gets this long before a forced exit
API_PATHS = ("/classify", "/classify_batch")


@dataclass
class Drain:
    """One worker's shutdown state: whether it drains, and what is still in flight."""

    draining: bool = False  # SIGTERM came: readiness fails
    since: float = 0.0
    in_flight: int = 0
    tasks: set = field(default_factory=set)
    delay: float = 0.0  # seconds after SIGTERM that requests are still answered as usual

    def elapsed(self) -> float:
        """Seconds since the drain began."""
        return time.monotonic() - self.since

    def refusing(self) -> bool:
        """New requests get 503: draining, and the drain delay is over."""
        return self.draining and self.elapsed() >= self.delay

    def done(self) -> bool:
        """The worker may stop: nothing in flight, the drain delay over, and it has said 503
        long enough (readiness since the signal counts: with a delay it said so already)."""
        return self.in_flight == 0 and self.elapsed() >= max(self.delay, LINGER_SECONDS)


DRAIN = Drain()  # the worker's own; the middleware and the service share it


def drain_on_signals(drain: Drain, grace: float, delay: float = 0.0) -> None:
    """Wrap uvicorn's SIGTERM and SIGINT handlers: drain (answering as usual for delay
    seconds) until drain.done() or grace, then call them."""
    drain.delay = delay
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue  # not under uvicorn (a test calling the class directly)

        def handler(signum: int, frame: Any, previous: Callable = previous) -> None:
            if drain.draining:  # a second signal: no more waiting
                previous(signum, frame)
                return
            drain.draining, drain.since = True, time.monotonic()
            log.info("signal %d: draining (answering for %g s, at most %g s in all)", signum,
                     drain.delay, grace)
            loop.call_soon_threadsafe(
                lambda: drain.tasks.add(loop.create_task(hand_over(drain, grace,
                                                                   signum, previous))))

        signal.signal(sig, handler)


async def hand_over(drain: Drain, grace: float, signum: int, previous: Callable) -> None:
    """Wait until drain.done() or the grace period ends, then start uvicorn's own shutdown."""
    while not drain.done() and drain.elapsed() < grace:
        await asyncio.sleep(0.05)
    if drain.in_flight:
        log.warning("grace period of %g s over with %d requests in flight", grace,
                    drain.in_flight)
    previous(signum, None)
    await asyncio.sleep(FORCE_AFTER_SECONDS)
    # uvicorn waits for open connections without limit; a second SIGINT is its forced exit.
    previous(signal.SIGINT, None)
    previous(signal.SIGINT, None)


async def send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None
                    ) -> None:
    """A complete JSON response through the raw ASGI send."""
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
           *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class Lifecycle:
    """ASGI middleware of the workers: /livez and /readyz answered here, at once (/readyz
    503 from the signal on); until the model is ready, and while draining once the drain
    delay is over, new requests get 503 with Retry-After (and a JSON code); requests in
    flight are counted."""

    def __init__(self, app: ASGIApp, drain: Drain = DRAIN,
                 model_state: Callable[[], Awaitable[dict]] | None = None) -> None:
        self.app, self.drain, self.model_state = app, drain, model_state
        self.model_ready = False  # once loaded, a model stays ready (swaps included)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/livez":
            await send_json(send, 200, {"code": "alive"})
            return
        if path == "/readyz":
            status, body = await self.readiness()
            await send_json(send, status, body)
            return
        if self.drain.refusing():
            await send_json(send, 503, {"error": "the server is shutting down: retry",
                                        "code": "draining"},
                            {"Retry-After": "1", "Connection": "close"})
            return
        if path in API_PATHS and not self.model_ready:
            status, body = await self.readiness()
            if status != 200:  # not accepted: the client may retry, here or elsewhere
                await send_json(send, 503, {"error": f"the model is not ready ({body['code']})",
                                            **body}, {"Retry-After": "1"})
                return
            self.model_ready = True
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1

    async def readiness(self) -> tuple[int, dict]:
        """200 once the model is loaded and warmed; 503 with a code until then or when draining."""
        if self.drain.draining:
            return 503, {"code": "draining"}
        try:
            state = await asyncio.wait_for((self.model_state or current_model_state)(), 0.8)
        except Exception as error:  # noqa: BLE001 - any failure to ask is "not ready"
            log.debug("readiness: no model state: %r", error)
            return 503, {"code": "model_unavailable"}
        if state.get("state") == "ready":
            return 200, {"code": "ready", "model": state.get("model"),
                         "top_hash": state.get("top_hash")}
        return 503, {"code": state.get("state", "loading"), "error": state.get("load_error")}


async def current_model_state() -> dict:
    """The model's state, asked through the current BentoML service."""
    import bentoml

    return await bentoml.get_current_service().model_state()
