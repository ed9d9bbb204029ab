"""The running API follows promotions, says when it is not ready, and drains on SIGTERM.

Each test runs a real `bentoml serve` with its own model name, so promotions here touch no
other test's model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import bentoml
import pytest
import requests

from flows.promotion.bentoml_store import promote
from flows.servers.local import TELEMETRY_OFF, BentoServer, free_port, stop_group
from tests.servicekit import Load, encoded, picture, register_tiny_model, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
IMAGE = encoded(picture(3))


def test_promotions_swap_in_under_load_and_a_broken_one_is_not(tmp_path):
    name = "swap-under-load"
    old = register_tiny_model(tmp_path / "old", name=name)
    new = register_tiny_model(tmp_path / "new", ["Ant", "Bee", "Cat", "Dog"], name=name)
    broken = register_tiny_model(tmp_path / "broken", name=name)
    Path(bentoml.models.get(broken).path_of("model.keras")).write_bytes(b"not a model")
    promote(old)
    settings = {"OPENIMAGER_MODEL_NAME": name, "OPENIMAGER_RELOAD_SECONDS": "1"}
    with BentoServer(None, log_path=tmp_path / "serve.log", env=settings) as server:
        assert requests.get(f"{server.url}/model", timeout=30).json()["tag"] == old
        with Load(server.url, 4, IMAGE) as load:
            wait_for(lambda: len(load.answers) > 20, "answers from the first model")
            promote(new)
            wait_for(lambda: any(a.model == new for a in load.answers), "an answer by the new")
            promote(broken)
            info = wait_for(lambda: (i := requests.get(f"{server.url}/model", timeout=30)
                                     .json())["last_reload_error"] and i, "a failed reload")
            settled = len(load.answers)
            wait_for(lambda: len(load.answers) > settled + 20, "answers after the failure")
        answers = load.answers
    assert [a for a in answers if a.status != 200] == []
    assert {a.model for a in answers} == {old, new}
    # Both request forms (servicekit.Load alternates them) answered by either model.
    assert {(a.form, a.model) for a in answers} == {(f, m) for f in ("form", "raw")
                                                     for m in (old, new)}
    assert all(a.model == new for a in answers[settled:])  # the broken one never answered
    assert info["tag"] == new and info["last_reload_error"]["model"].startswith(broken)
    assert [c["name"] for c in info["classes"]] == ["Ant", "Bee", "Cat", "Dog"]


def test_labels_travel_with_the_model_that_answered(tmp_path):
    name = "swap-labels"
    old = register_tiny_model(tmp_path / "old", name=name)
    new = register_tiny_model(tmp_path / "new", ["Ant", "Bee", "Cat", "Dog"], name=name)
    promote(old)
    settings = {"OPENIMAGER_MODEL_NAME": name, "OPENIMAGER_RELOAD_SECONDS": "1"}
    with BentoServer(None, log_path=tmp_path / "serve.log", env=settings) as server:
        def classify() -> dict:
            return requests.post(f"{server.url}/classify", data={"top": "4"}, timeout=30,
                                 files={"image": ("x.jpg", IMAGE, "image/jpeg")}).json()

        def classify_raw() -> dict:
            return requests.post(f"{server.url}/classify?top=4", data=IMAGE, timeout=30,
                                 headers={"Content-Type": "image/jpeg"}).json()

        assert {lab["label"] for lab in classify()["labels"]} == {"Circle", "Square",
                                                                   "Triangle"}
        promote(new)
        answer = wait_for(lambda: (a := classify())["model"] == new and a, "the swap")
        raw = classify_raw()
    assert {lab["label"] for lab in answer["labels"]} == {"Ant", "Bee", "Cat", "Dog"}
    assert raw["model"] == new and raw["labels"] == answer["labels"]


def start_serve(tmp_path: Path, name: str, env: dict[str, str]
                ) -> tuple[subprocess.Popen, str, list[tuple[int, str]]]:
    """`bentoml serve` of a promoted tiny model in its own session, so SIGTERM reaches the
    server only, as a container stop sends it; returns it, its URL and the readiness answers
    seen until it was ready (the liveness probe answered 200 whenever readiness said 503)."""
    promote(register_tiny_model(tmp_path / "model", name=name))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = {**os.environ, **TELEMETRY_OFF, "OPENIMAGER_MODEL_NAME": name, **env}
    with (tmp_path / "serve.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service.service:Classifier", "--host",
             "127.0.0.1", "--port", str(port)], cwd=ROOT, env=settings, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    seen: list[tuple[int, str]] = []
    try:
        while not seen or seen[-1] != (200, "ready"):
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                reply = requests.get(f"{url}/readyz", timeout=10)
            except requests.ConnectionError:  # the port is not open yet
                time.sleep(0.1)
                continue
            seen.append((reply.status_code, reply.json()["code"]))
            if reply.status_code == 503:
                assert requests.get(f"{url}/livez", timeout=10).status_code == 200
    except BaseException:
        stop_group(process)
        raise
    return process, url, seen


def test_readiness_answers_while_loading_and_drain_fails_no_request(tmp_path):
    process, url, seen = start_serve(tmp_path, "drain", {"OPENIMAGER_GRACE_SECONDS": "20"})
    try:
        assert set(seen) <= {(503, "loading"), (503, "model_unavailable"), (200, "ready")}
        assert (503, "loading") in seen, seen

        with Load(url, 6, IMAGE) as load:
            wait_for(lambda: sum(a.status == 200 for a in load.answers) > 30, "answers")
            term = time.monotonic()
            process.send_signal(signal.SIGTERM)  # the server only, as a container stop sends
            process.wait(60)  # the exit time itself is measured in benchmarks/swap.py
        answers = load.answers
    finally:
        stop_group(process)
    answered = [a for a in answers if a.status is not None]
    assert [(a.status, a.code) for a in answered
            if a.status != 200 and (a.status, a.code) != (503, "draining")] == []
    # requests that were under way when the signal came were answered, not cut off
    assert [a for a in answers if a.start < term and a.status is None] == []
    assert any(a.status == 200 and a.end > term for a in answers)
    # both request forms (servicekit.Load alternates them) were answered, then drained
    assert {a.form for a in answered if a.status == 200} == {"form", "raw"}
    assert {a.form for a in answered if a.code == "draining"} == {"form", "raw"}


def test_drain_delay_fails_readiness_at_once_and_keeps_answering(tmp_path):
    """With a drain delay, as behind a load balancer: after SIGTERM /readyz says 503 while
    /classify still answers 200 for the whole delay; then in-flight requests finish and the
    server exits by itself."""
    delay = 6.0
    process, url, _ = start_serve(tmp_path, "drain-delay", {
        "OPENIMAGER_GRACE_SECONDS": "20", "OPENIMAGER_DRAIN_DELAY_SECONDS": str(delay)})
    readiness: list[tuple[float, int, str]] = []
    try:
        with Load(url, 4, IMAGE) as load:
            wait_for(lambda: sum(a.status == 200 for a in load.answers) > 20, "answers")
            term = time.monotonic()
            process.send_signal(signal.SIGTERM)

            def unready() -> bool:
                reply = requests.get(f"{url}/readyz", timeout=10)
                readiness.append((time.monotonic(), reply.status_code, reply.json()["code"]))
                return reply.status_code == 503

            wait_for(unready, "readiness failing after SIGTERM", every=0.05)
            unready_at = readiness[-1][0]
            # while readiness fails, the API still answers as usual
            wait_for(lambda: any(a.status == 200 and a.start > unready_at
                                 for a in load.answers), "an answer after readiness failed")
            process.wait(60)
        answers = load.answers
    finally:
        stop_group(process)
    assert readiness[-1][1:] == (503, "draining"), readiness
    assert all(status == 200 for _, status, _ in readiness[:-1]), readiness
    # requests sent during the first part of the delay (the worker's delay starts once the
    # signal reaches it, after `term`): all answered 200, none refused or cut off
    during = [a for a in answers if term <= a.start < term + delay / 2]
    assert during and [(a.status, a.code, a.error) for a in during if a.status != 200] == []
    # before and after: 200, or the drain's own 503 once the delay is over; nothing cut off
    assert [(a.status, a.code) for a in answers if a.status is not None and a.status != 200
            and (a.status, a.code) != (503, "draining")] == []
    assert [a for a in answers if a.start < term + delay / 2 and a.status is None] == []
    assert process.returncode is not None
