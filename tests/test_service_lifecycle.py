"""The drain's states without a server: when readiness fails, when requests are refused, when
the worker may stop; and the drain delay's setting."""

from __future__ import annotations

import time

import pytest

from service.config import Lifecycle
from service.lifecycle import LINGER_SECONDS, Drain


def draining_for(seconds: float, delay: float = 0.0, in_flight: int = 0) -> Drain:
    return Drain(draining=True, since=time.monotonic() - seconds, in_flight=in_flight,
                 delay=delay)


def test_without_a_delay_requests_are_refused_at_once():
    drain = draining_for(0.0)
    assert drain.refusing() and not drain.done()  # it says 503 for LINGER_SECONDS first
    assert draining_for(LINGER_SECONDS + 0.1).done()


def test_during_the_delay_requests_are_answered_and_the_worker_stays():
    drain = draining_for(2.0, delay=5.0)
    assert drain.draining and not drain.refusing() and not drain.done()
    after = draining_for(5.1, delay=5.0)
    assert after.refusing() and after.done()
    assert not draining_for(5.1, delay=5.0, in_flight=1).done()


def test_not_draining_refuses_nothing():
    assert not Drain(delay=5.0).refusing()


def test_the_delay_setting(monkeypatch):
    monkeypatch.delenv("OPENIMAGER_DRAIN_DELAY_SECONDS", raising=False)
    monkeypatch.delenv("OPENIMAGER_GRACE_SECONDS", raising=False)
    assert Lifecycle.from_env().drain_delay_seconds == 0.0  # bare `bentoml serve`: as before
    monkeypatch.setenv("OPENIMAGER_DRAIN_DELAY_SECONDS", "10")
    assert Lifecycle.from_env().drain_delay_seconds == 10.0
    monkeypatch.setenv("OPENIMAGER_GRACE_SECONDS", "10")
    with pytest.raises(ValueError, match="must be under OPENIMAGER_GRACE_SECONDS=10"):
        Lifecycle.from_env()
    monkeypatch.setenv("OPENIMAGER_DRAIN_DELAY_SECONDS", "-1")
    with pytest.raises(ValueError, match="at least 0"):
        Lifecycle.from_env()
