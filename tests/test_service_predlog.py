"""A real `bentoml serve` logs what it answers, takes feedback, and loses at most the last
unflushed part when killed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import requests

from flows.servers.local import BentoServer
from model.predictions import LOG_SCHEMA, read_feedback, read_log
from tests.servicekit import (
    CLASSES,
    encoded,
    picture,
    register_tiny_model,
    serve_tiny_model,
    wait_for,
)

pytestmark = pytest.mark.integration
JPEG = encoded(picture(3))
PNG = encoded(picture(4), "PNG")


def classify(url: str, image: bytes = JPEG) -> requests.Response:
    return requests.post(f"{url}/classify", files={"image": ("x.jpg", image)}, timeout=30)


def batch(url: str) -> requests.Response:
    return requests.post(f"{url}/classify_batch", timeout=30, files=[
        ("images", ("a.jpg", JPEG)), ("images", ("b.png", PNG)), ("images", ("c.jpg", JPEG))])


def test_answers_are_logged_feedback_is_stored_and_a_kill_loses_only_the_open_part(tmp_path):
    folder = tmp_path / "predictions"
    tag = register_tiny_model(tmp_path / "model")
    settings = {"OPENIMAGER_PREDICTION_LOG_DIR": str(folder), "OPENIMAGER_PREDICTION_LOG_ROWS":
                "4", "OPENIMAGER_PREDICTION_LOG_SECONDS": "3600"}
    with BentoServer(tag, log_path=tmp_path / "serve.log", env=settings) as server:
        one, three = classify(server.url), batch(server.url)  # 4 rows: one part
        assert one.status_code == three.status_code == 200
        assert one.headers["X-Request-ID"] == one.json()["request_id"]
        batch_ids = [r["request_id"] for r in three.json()["results"]]
        assert three.headers["X-Request-ID"] == batch_ids[0] and len(set(batch_ids)) == 3
        wait_for(lambda: len(read_log(folder)) == 4, "the first part", 60, 0.1)
        rows = read_log(folder)
        open_part = [classify(server.url).json()["request_id"] for _ in range(2)]

        ok = requests.post(f"{server.url}/feedback", timeout=30,
                           json={"request_id": open_part[0], "label": "triangle"})
        form = requests.post(f"{server.url}/feedback", timeout=30,
                             data={"request_id": batch_ids[1], "label": " CIRCLE "})
        unknown = requests.post(f"{server.url}/feedback", timeout=30,
                                json={"request_id": "0" * 32, "label": "Circle"})
        bad_label = requests.post(f"{server.url}/feedback", timeout=30,
                                  json={"request_id": batch_ids[1], "label": "Dog"})
        missing = requests.post(f"{server.url}/feedback", timeout=30, json={"label": "Dog"})
        # kill -9 of every process: no shutdown hook runs
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(30)

    assert list(rows.columns) == LOG_SCHEMA.names
    assert list(rows.request_id) == [one.json()["request_id"], *batch_ids]
    assert list(rows.endpoint) == ["classify"] + ["classify_batch"] * 3
    assert list(rows.format) == ["JPEG", "JPEG", "PNG", "JPEG"]
    assert (rows.width == 48).all() and (rows.height == 40).all() and (rows.model == tag).all()
    assert np.allclose([p.sum() for p in rows.probabilities], 1, atol=1e-4)
    assert all(list(c) == CLASSES for c in rows.classes)
    answered = [one.json()["labels"], *(r["labels"] for r in three.json()["results"])]
    assert list(rows.top_label) == [labels[0]["label"] for labels in answered]
    assert np.allclose(rows.top_probability, [labels[0]["probability"] for labels in answered],
                       atol=1e-5)
    assert (rows.latency_ms > 0).all() and not rows.kept.any()
    assert len(set(rows.sha256)) == 2  # the same JPEG twice, one PNG

    assert ok.status_code == form.status_code == 200, (ok.text, form.text)
    # Labels in any case are stored under the class's own name, as the command line takes them.
    assert (ok.json()["label"], form.json()["label"]) == ("Triangle", "Circle")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_request")
    assert (bad_label.status_code, bad_label.json()["code"]) == (400, "unknown_label")
    assert (missing.status_code, missing.json()["code"]) == (400, "missing_field")
    feedback = read_feedback(folder)
    assert feedback[["request_id", "label", "model"]].values.tolist() == [
        [open_part[0], "Triangle", tag], [batch_ids[1], "Circle", tag]]

    # The kill lost the two rows of the open part only; what is on disk reads whole.
    assert list(read_log(folder).request_id) == list(rows.request_id)
    assert all(p.name.startswith("part-") for p in (folder / "log").iterdir())


def test_sigterm_writes_the_open_part(tmp_path):
    folder = tmp_path / "predictions"
    with serve_tiny_model(tmp_path, {"OPENIMAGER_PREDICTION_LOG_DIR": str(folder),
                                     "OPENIMAGER_PREDICTION_SAMPLE_RATE": "1"}) as served:
        ids = [classify(served.url, image).json()["request_id"] for image in (JPEG, PNG)]
        assert read_log(folder).empty  # 1000 rows or 10 s not reached
    rows = read_log(folder)
    assert list(rows.request_id) == ids and rows.kept.all()
    assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(
        f"{sha}.{ext}" for sha, ext in zip(rows.sha256, ("jpg", "png"), strict=True))
    assert (folder / "images" / f"{rows.sha256[1]}.png").read_bytes() == PNG


def test_logging_off_writes_nothing_and_refuses_feedback(tmp_path):
    folder = tmp_path / "predictions"
    with serve_tiny_model(tmp_path, {"OPENIMAGER_PREDICTION_LOG_DIR": str(folder),
                                     "OPENIMAGER_PREDICTION_LOG": "false",
                                     "OPENIMAGER_PREDICTION_LOG_SECONDS": "0.1"}) as served:
        answer = classify(served.url)
        assert answer.status_code == 200 and answer.json()["request_id"]
        refused = requests.post(f"{served.url}/feedback", timeout=30, json={
            "request_id": answer.json()["request_id"], "label": "Circle"})
        assert (refused.status_code, refused.json()["code"]) == (409, "prediction_log_off")
        for path in ("review", f"review/images/{'0' * 64}.png"):
            off = requests.get(f"{served.url}/{path}", timeout=30)
            assert (off.status_code, off.json()["code"]) == (409, "prediction_log_off"), path
    assert not Path(folder).exists()
