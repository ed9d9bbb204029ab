"""Feedback that cannot be abused: a bearer token and a per-client rate; abstaining answers."""

from __future__ import annotations

import pytest
import requests

from service.feedbackguard import FeedbackPolicy, TokenBucket, retry_after
from tests.servicekit import encoded, picture, serve_tiny_model


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_a_burst_then_its_rate_per_client():
    clock = Clock()
    bucket = TokenBucket(per_minute=6, burst=2, clock=clock)  # one every 10 s
    assert [bucket.take("a"), bucket.take("a")] == [0.0, 0.0]
    assert bucket.take("a") == pytest.approx(10.0)
    assert bucket.take("b") == 0.0  # another client has its own bucket
    clock.now += 5
    assert bucket.take("a") == pytest.approx(5.0)  # refused attempts do not spend tokens
    clock.now += 5
    assert bucket.take("a") == 0.0
    assert retry_after(0.2) == "1" and retry_after(4.1) == "5"


def test_the_token_is_required_only_when_set(monkeypatch):
    assert FeedbackPolicy().authorized(None)
    monkeypatch.setenv("OPENIMAGER_FEEDBACK_TOKEN", "s3cret")
    policy = FeedbackPolicy.from_env()
    assert policy.authorized("Bearer s3cret") and policy.authorized("bearer s3cret")
    assert not policy.authorized(None) and not policy.authorized("Bearer wrong")
    assert not policy.authorized("Basic s3cret") and not policy.authorized("s3cret")


@pytest.mark.integration
def test_the_service_abstains_and_guards_feedback(tmp_path):
    pytest.importorskip("keras")
    env = {"OPENIMAGER_FEEDBACK_TOKEN": "s3cret", "OPENIMAGER_FEEDBACK_BURST": "3",
           "OPENIMAGER_FEEDBACK_PER_MINUTE": "1", "OPENIMAGER_MIN_CONFIDENCE": "0.99",
           "OPENIMAGER_WORKERS": "1"}
    with serve_tiny_model(tmp_path, env) as served:
        image = encoded(picture(2))
        answer = requests.post(f"{served.url}/classify", files={"image": ("a.jpg", image)},
                               timeout=60).json()
        # An untrained model is never 99 % sure: the answer says so beside its labels.
        assert answer["unsure"] is True and answer["labels"]
        batch = requests.post(f"{served.url}/classify_batch", timeout=60,
                              files=[("images", ("a.jpg", image)), ("images", ("b.jpg", image))])
        assert [r["unsure"] for r in batch.json()["results"]] == [True, True]

        def send(headers=None):
            return requests.post(f"{served.url}/feedback", timeout=30, headers=headers or {},
                                 json={"request_id": answer["request_id"], "label": "Circle"})

        bare, wrong = send(), send({"Authorization": "Bearer nope"})
        right, flood = send({"Authorization": "Bearer s3cret"}), \
            send({"Authorization": "Bearer s3cret"})
    assert (bare.status_code, bare.json()["code"]) == (401, "unauthorized")
    assert bare.headers["WWW-Authenticate"] == "Bearer" and "error" in bare.json()
    assert (wrong.status_code, wrong.json()["code"]) == (401, "unauthorized")
    assert right.status_code == 200 and right.json()["stored"], right.text
    assert (flood.status_code, flood.json()["code"]) == (429, "rate_limited")
    assert int(flood.headers["Retry-After"]) >= 1


@pytest.mark.integration
def test_an_answer_over_the_threshold_is_not_unsure(tmp_path):
    pytest.importorskip("keras")
    # Three classes: the top probability is at least 1/3, over this threshold whatever the
    # untrained model answers.
    env = {"OPENIMAGER_MIN_CONFIDENCE": "0.3", "OPENIMAGER_WORKERS": "1"}
    with serve_tiny_model(tmp_path, env) as served:
        image = encoded(picture(2))
        answer = requests.post(f"{served.url}/classify", files={"image": ("a.jpg", image)},
                               timeout=60).json()
        batch = requests.post(f"{served.url}/classify_batch", timeout=60,
                              files=[("images", ("a.jpg", image)),
                                     ("images", ("b.jpg", encoded(picture(5))))]).json()
    assert answer["labels"][0]["probability"] >= 0.3 and answer["unsure"] is False
    results = batch["results"]
    assert [r["labels"][0]["probability"] >= 0.3 for r in results] == [True, True]
    assert [r["unsure"] for r in results] == [False, False]


def test_the_page_shows_an_unsure_answer():
    from pathlib import Path

    page = (Path(__file__).parent.parent / "service" / "static" / "ui.html").read_text()
    assert 'id="unsure"' in page
    assert '$("unsure").style.display = answer.unsure ? "block" : "none";' in page
