"""Who may send feedback, and how much: a bearer token (OPENIMAGER_FEEDBACK_TOKEN, required
when set) and a token bucket per client address (OPENIMAGER_FEEDBACK_PER_MINUTE,
OPENIMAGER_FEEDBACK_BURST). Feedback becomes training data, so one client must not be able to
flood it; each worker process keeps its own buckets."""

from __future__ import annotations

import hmac
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from service.config import env_number

MAX_CLIENTS = 10_000  # buckets kept; the least recently seen client is forgotten first


@dataclass(frozen=True)
class FeedbackPolicy:
    """The token feedback needs (None: none) and each client's rate."""

    token: str | None = None
    per_minute: float = 30.0
    burst: float = 10.0

    @classmethod
    def from_env(cls) -> FeedbackPolicy:
        """The policy from OPENIMAGER_FEEDBACK_* variables."""
        token = os.environ.get("OPENIMAGER_FEEDBACK_TOKEN", "").strip() or None
        return cls(token, env_number("OPENIMAGER_FEEDBACK_PER_MINUTE", 30.0, 0.001),
                   env_number("OPENIMAGER_FEEDBACK_BURST", 10.0, 1))

    def authorized(self, header: str | None) -> bool:
        """Whether an Authorization header carries the token (always, when none is set)."""
        if self.token is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  self.token.encode())


class TokenBucket:
    """Per-key token buckets: burst tokens, refilled at per_minute; thread-safe."""

    def __init__(self, per_minute: float, burst: float, clock=time.monotonic) -> None:
        self.rate, self.burst, self.clock = per_minute / 60.0, burst, clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one token for key: 0 if there was one, else the seconds until there is."""
        with self.lock:
            now = self.clock()
            tokens, last = self.buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self.buckets[key] = (tokens - 1 if tokens >= 1 else tokens, now)
            while len(self.buckets) > MAX_CLIENTS:
                self.buckets.popitem(last=False)
            return wait


def retry_after(wait: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))
