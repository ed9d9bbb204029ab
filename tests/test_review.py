"""The review queue: the kept uploads without feedback, read from the prediction log's store
(a folder or an S3 prefix) as the service's workers write it, over HTTP and on the page."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import requests
from starlette.requests import Request

from model.predictions import FEEDBACK_SCHEMA, LOG_SCHEMA, SHADOW_FILE, read_feedback
from service.logstore import LocalStore, S3Store
from service.predlog import parquet
from service.review import ReviewQueue
from service.reviewapi import IMAGE_NAME, query
from tests import test_service_ui as page
from tests.servicekit import CLASSES, encoded, picture, serve_tiny_model, wait_for
from tests.test_service_ui import wait

START = datetime(2026, 1, 1, tzinfo=UTC)
WRITER = "0123456789abcdef"
TOKEN = "s3cret"
browser = page.browser  # the page tests' headless Chromium, a fixture here too


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def answer(request_id: str, image: str, probs: list[float], minute: int = 0, kept: bool = True,
           model: str = "m:1") -> dict:
    """A log row as the service writes it."""
    top = int(np.argmax(probs))
    return {"request_id": request_id, "time": START + timedelta(minutes=minute),
            "endpoint": "classify", "sha256": sha(image), "width": 8, "height": 8,
            "format": "PNG", "model": model, "classes": CLASSES, "probabilities": probs,
            "top_label": CLASSES[top], "top_probability": probs[top], "latency_ms": 1.0,
            "kept": kept, "top_hash": "ab" * 32}


def part(store, folder: str, rows: list[dict], seq: int, schema: pa.Schema = LOG_SCHEMA) -> str:
    """Write rows as one part named like the service's; its key."""
    key = f"{folder}/part-20260101T000000-{WRITER}-{seq:06d}.parquet"
    store.put(key, parquet(rows, schema))
    return key


def feedback(store, request_ids: list[str], seq: int) -> str:
    rows = [{"request_id": r, "label": "Square", "time": START, "model": "m:1"}
            for r in request_ids]
    return part(store, "feedback", rows, seq, FEEDBACK_SCHEMA)


def ids(body: dict) -> list[str]:
    return [item["request_id"] for item in body["items"]]


UNSURE = [0.5, 0.45, 0.05]  # margin 0.05, entropy 0.856
FLAT = [0.4, 0.3, 0.3]  # margin 0.1, entropy 1.089 (the highest)
SURE = [0.9, 0.05, 0.05]  # margin 0.85, entropy 0.394
MIDDLE = [0.6, 0.2, 0.2]  # margin 0.4, entropy 0.950


class Counting(LocalStore):
    """A folder store that records which files were read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def source(self, key: str):
        self.reads.append(key)
        return super().source(key)


def test_the_queue_sorts_by_margin_entropy_or_disagreement(tmp_path):
    store = LocalStore(tmp_path)
    part(store, "log", [answer("a", "a", UNSURE), answer("b", "b", FLAT, 1),
                        answer("skipped", "x", [0.34, 0.33, 0.33], kept=False)], 0)
    part(store, "log", [answer("c", "c", SURE, 2), answer("d", "d", MIDDLE, 3)], 1)
    queue = ReviewQueue(store)
    body = queue.answer()
    assert ids(body) == ["a", "b", "d", "c"] and body["total"] == 4
    assert (body["order"], body["shadow"]) == ("margin", None)
    first = body["items"][0]
    assert first == {
        "request_id": "a", "sha256": sha("a"), "image": f"review/images/{sha('a')}.png",
        "time": "2026-01-01T00:00:00+00:00", "model": "m:1", "top_hash": "ab" * 32,
        "classes": CLASSES, "labels": [{"label": c, "probability": pytest.approx(p, abs=1e-6)}
                                       for c, p in zip(CLASSES, UNSURE, strict=True)],
        "top_label": "Circle", "top_probability": 0.5, "margin": pytest.approx(0.05, abs=1e-6),
        "entropy": round(float(-(np.log(UNSURE) * UNSURE).sum()), 4), "disagreement": None}
    assert ids(queue.answer("entropy")) == ["b", "d", "a", "c"]
    assert ids(queue.answer("margin", limit=2)) == ["a", "b"]
    assert queue.answer("margin", limit=2)["total"] == 4

    shadow = {"candidate": "m:2", "incumbent": "m:1", "at": "2026-01-02T00:00:00+00:00",
              "since": None, "report": {"replayed": 4},
              "disagreements": [
                  {"sha256": sha("c"), "name": f"{sha('c')}.png", "incumbent_label": "Circle",
                   "incumbent_probability": 0.9, "candidate_label": "Square",
                   "candidate_probability": 0.7},
                  # listed, but both say the same: not sorted first
                  {"sha256": sha("d"), "name": f"{sha('d')}.png", "incumbent_label": "Circle",
                   "incumbent_probability": 0.6, "candidate_label": "Circle",
                   "candidate_probability": 0.8}]}
    store.put(SHADOW_FILE, json.dumps(shadow).encode())
    body = queue.answer("disagreement")
    assert ids(body) == ["c", "a", "b", "d"]
    assert body["shadow"] == {"candidate": "m:2", "incumbent": "m:1",
                              "at": "2026-01-02T00:00:00+00:00"}
    assert body["items"][0]["disagreement"] == {
        "candidate": "m:2", "candidate_label": "Square", "candidate_probability": 0.7,
        "incumbent": "m:1", "incumbent_label": "Circle", "incumbent_probability": 0.9}
    assert body["items"][1]["disagreement"] is None
    assert body["items"][3]["disagreement"]["candidate_label"] == "Circle"


def test_one_item_per_upload_its_newest_answer_until_it_has_feedback(tmp_path):
    store = LocalStore(tmp_path)
    part(store, "log", [answer("old", "same", UNSURE, 0, model="m:1"),
                        answer("other", "other", FLAT, 1)], 0)
    part(store, "log", [answer("new", "same", SURE, 5, model="m:2")], 1)
    queue = ReviewQueue(store)
    body = queue.answer()
    assert ids(body) == ["other", "new"] and body["items"][1]["model"] == "m:2"

    feedback(store, ["unknown-request"], 0)
    assert ids(queue.answer()) == ["other", "new"]
    # Feedback on any answer of an image takes the image out, its older answer's too.
    feedback(store, ["old"], 1)
    assert ids(queue.answer()) == ["other"]
    feedback(store, ["other"], 2)
    assert queue.answer() == {"items": [], "total": 0, "order": "margin", "shadow": None}


def test_only_new_parts_are_read_and_evicted_ones_are_dropped(tmp_path):
    store = Counting(tmp_path)
    first = part(store, "log", [answer("a", "a", UNSURE)], 0)
    second = part(store, "log", [answer("b", "b", FLAT)], 1)
    (tmp_path / "log" / ".part-unfinished.parquet.1.tmp").write_bytes(b"half")
    queue = ReviewQueue(store)
    assert ids(queue.answer()) == ["a", "b"]
    assert sorted(store.reads) == [first, second]

    third = part(store, "log", [answer("c", "c", [0.48, 0.47, 0.05])], 2)
    store.reads.clear()
    assert ids(queue.answer()) == ["c", "a", "b"]
    assert store.reads == [third]

    store.delete(first)  # evicted by a writer's size bound
    store.reads.clear()
    assert ids(queue.answer()) == ["c", "b"] and store.reads == []

    fed = feedback(store, ["b"], 0)
    store.reads.clear()
    assert ids(queue.answer()) == ["c"] and store.reads == [fed]


def test_unreadable_parts_and_shadow_files_are_left_out(tmp_path):
    store = LocalStore(tmp_path)
    part(store, "log", [answer("a", "a", UNSURE)], 0)
    store.put(f"log/part-20260101T000000-{WRITER}-000001.parquet", b"not parquet")
    store.put(SHADOW_FILE, b"{not json")
    queue = ReviewQueue(store)
    body = queue.answer("disagreement")
    assert ids(body) == ["a"] and body["shadow"] is None
    assert body["items"][0]["disagreement"] is None

    store.put(SHADOW_FILE, json.dumps({"candidate": "m:2", "disagreements": [
        "not an entry", {"sha256": sha("a"), "candidate_label": "Square",
                         "incumbent_label": "Circle"}]}).encode())
    body = queue.answer("disagreement")  # read again: the file changed
    assert body["shadow"] == {"candidate": "m:2", "incumbent": None, "at": None}
    assert body["items"][0]["disagreement"]["candidate_label"] == "Square"

    store.put(SHADOW_FILE, b'["a list"]')
    assert queue.answer()["shadow"] is None
    store.delete(SHADOW_FILE)
    assert queue.answer()["shadow"] is None


def test_image_names_are_checked(tmp_path):
    store = LocalStore(tmp_path)
    name = f"{sha('a')}.png"
    store.put(f"images/{name}", b"png bytes")
    store.put("secret.txt", b"not an image")
    queue = ReviewQueue(store)
    assert queue.image(name) == b"png bytes"
    assert queue.image(f"{sha('b')}.png") is None  # evicted, or never kept
    for bad in ("../secret.txt", f"{sha('a')}.txt", f"{sha('a').upper()}.png", f"{name}\n",
                f"{sha('a')[:-1]}.png", f"../images/{name}", ""):
        assert not IMAGE_NAME.fullmatch(bad) and queue.image(bad) is None, bad


def asked(query_string: str) -> tuple[str, int] | tuple[int, str]:
    """What GET /review's query parsing makes of a query string: (order, limit) or (status,
    code)."""
    got = query(Request({"type": "http", "query_string": query_string.encode(), "headers": []}))
    return got if isinstance(got, tuple) else (got.status_code, json.loads(got.body)["code"])


def test_the_query_is_checked():
    assert asked("") == ("margin", 50)
    assert asked("order=entropy&limit=500") == ("entropy", 500)
    assert asked("order=disagreement&limit=1") == ("disagreement", 1)
    for bad in ("order=newest", "limit=0", "limit=501", "limit=ten", "limit=-1", "limit=1.5"):
        assert asked(bad) == (400, "bad_query"), bad


def test_an_s3_prefix_is_read_like_a_folder(local_s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", local_s3.endpoint_url)
    local_s3.create_bucket("review-log", versioned=False)
    store = S3Store(f"s3://review-log/{uuid.uuid4().hex}/predictions")
    first = part(store, "log", [answer("a", "a", UNSURE), answer("b", "b", FLAT)], 0)
    store.put(f"images/{sha('a')}.png", b"png bytes")
    store.put(SHADOW_FILE, json.dumps({"candidate": "m:2", "incumbent": "m:1", "at": "now",
                                       "disagreements": [{"sha256": sha("b"),
                                                          "candidate_label": "Square",
                                                          "incumbent_label": "Circle"}]
                                       }).encode())
    queue = ReviewQueue(store)
    body = queue.answer("disagreement")
    assert ids(body) == ["b", "a"] and body["shadow"]["candidate"] == "m:2"
    assert queue.image(f"{sha('a')}.png") == b"png bytes"
    assert queue.image(f"{sha('b')}.png") is None

    part(store, "log", [answer("c", "c", SURE)], 1)
    feedback(store, ["b"], 0)
    assert ids(queue.answer()) == ["a", "c"]
    store.delete(first)
    assert ids(queue.answer()) == ["c"]


# Against a real `bentoml serve`: every upload kept, parts written every 0.2 s.
KEEP_ALL = {"OPENIMAGER_PREDICTION_SAMPLE_RATE": "1", "OPENIMAGER_PREDICTION_LOG_SECONDS": "0.2"}


@pytest.fixture(scope="module")
def review_server(tmp_path_factory: pytest.TempPathFactory):
    with serve_tiny_model(tmp_path_factory.mktemp("review"), KEEP_ALL) as served:
        yield served


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory):
    env = {**KEEP_ALL, "OPENIMAGER_FEEDBACK_TOKEN": TOKEN}
    with serve_tiny_model(tmp_path_factory.mktemp("review-guarded"), env) as served:
        yield served


def classify(url: str, image: bytes, name: str = "a.png") -> dict:
    reply = requests.post(f"{url}/classify", files={"image": (name, image)}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def listed(url: str, request_ids: set[str], headers: dict | None = None) -> dict:
    """GET /review once it lists every one of request_ids."""
    def check() -> dict | None:
        body = requests.get(f"{url}/review?limit=500", headers=headers, timeout=30).json()
        return body if request_ids <= set(ids(body)) else None
    return wait_for(check, "the kept uploads in the review queue", 60, 0.2)


@pytest.mark.integration
def test_the_service_lists_kept_uploads_least_certain_first(review_server):
    url = review_server.url
    images = {name: encoded(picture(seed, (40 + seed, 30)), fmt)
              for seed, (name, fmt) in enumerate([("a.jpg", "JPEG"), ("b.png", "PNG"),
                                                  ("c.webp", "WEBP")], start=20)}
    answers = {name: classify(url, data, name) for name, data in images.items()}
    by_id = {a["request_id"]: name for name, a in answers.items()}
    body = listed(url, set(by_id))
    margins = [item["margin"] for item in body["items"]]
    assert margins == sorted(margins) and body["total"] == len(body["items"])
    mine = [item for item in body["items"] if item["request_id"] in by_id]
    for item in mine:
        labels = answers[by_id[item["request_id"]]]["labels"]
        assert item["margin"] == pytest.approx(labels[0]["probability"] -
                                               labels[1]["probability"], abs=1e-5)
        assert [e["label"] for e in item["labels"]] == [e["label"] for e in labels]
        image = requests.get(f"{url}/{item['image']}", timeout=30)
        assert image.status_code == 200 and image.content == images[by_id[item["request_id"]]]
        assert image.headers["Cache-Control"] == "private, max-age=3600"
        assert image.headers["Content-Type"].startswith("image/")
    entropies = [i["entropy"] for i in requests.get(f"{url}/review?order=entropy",
                                                    timeout=30).json()["items"]]
    assert entropies == sorted(entropies, reverse=True)
    assert len(requests.get(f"{url}/review?limit=1", timeout=30).json()["items"]) == 1

    done = mine[0]["request_id"]
    stored = requests.post(f"{url}/feedback", json={"request_id": done, "label": "Square"},
                           timeout=30)
    assert stored.status_code == 200, stored.text
    after = requests.get(f"{url}/review?order=disagreement", timeout=30).json()
    assert done not in ids(after) and after["total"] == body["total"] - 1

    for bad in ("order=newest", "limit=0", "limit=501", "limit=x"):
        refused = requests.get(f"{url}/review?{bad}", timeout=30)
        assert (refused.status_code, refused.json()["code"]) == (400, "bad_query"), bad
    for name in ("x.jpg", f"{'0' * 64}.png", f"{'0' * 64}.exe"):
        missing = requests.get(f"{url}/review/images/{name}", timeout=30)
        assert (missing.status_code, missing.json()["code"]) == (404, "unknown_image"), name
    paths = requests.get(f"{url}/docs.json", timeout=30).json()["paths"]
    assert "get" in paths["/review"] and "get" in paths["/review/images/{name}"]


@pytest.mark.integration
def test_the_queue_and_its_images_need_the_token_when_it_is_set(guarded_server):
    url = guarded_server.url
    image = encoded(picture(30), "PNG")
    request_id = classify(url, image)["request_id"]
    body = listed(url, {request_id}, {"Authorization": f"Bearer {TOKEN}"})
    bare = requests.get(f"{url}/review", timeout=30)
    wrong = requests.get(f"{url}/review", headers={"Authorization": "Bearer nope"}, timeout=30)
    for refused in (bare, wrong):
        assert (refused.status_code, refused.json()["code"]) == (401, "unauthorized")
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    path = f"{url}/{body['items'][0]['image']}"
    assert requests.get(path, timeout=30).status_code == 401
    assert requests.get(path, headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=30).content == image


def review_ids(driver) -> list[str]:
    """The request ids of the page's review items, read at once (a row may go meanwhile)."""
    return driver.execute_script("return Array.from(document.querySelectorAll("
                                 "'#review-items .review-item'), (r) => r.dataset.requestId)")


def review_row(driver, request_id: str):
    """The page's review item of a request id."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR,
                               f'#review-items .review-item[data-request-id="{request_id}"]')


def label_one_on_the_page(driver, server, request_ids: list[str], width: int) -> None:
    """With the page's review list showing request_ids: their thumbnails are shown; clicking a
    class of the first takes it out of the list and stores the feedback."""
    from selenium.webdriver.common.by import By

    wait(driver, lambda d: set(request_ids) <= set(review_ids(d)))
    for request_id in request_ids:
        thumb = review_row(driver, request_id).find_element(By.CSS_SELECTOR, ".thumb")
        wait(driver, lambda d, t=thumb: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", t) == width)
    first = review_row(driver, request_ids[0])
    buttons = first.find_elements(By.CSS_SELECTOR, "button.label-button")
    assert [b.text for b in buttons] == CLASSES
    assert "%" in first.find_element(By.CSS_SELECTOR, ".answer").text
    buttons[2].click()
    wait(driver, lambda d: request_ids[0] not in review_ids(d))
    assert set(request_ids[1:]) <= set(review_ids(driver))
    status = driver.find_element(By.ID, "review-status").text
    assert status.startswith("stored: Triangle"), status
    stored = read_feedback(server.log.parent / "predictions")
    assert stored.set_index("request_id").label[request_ids[0]] == "Triangle"


@pytest.mark.integration
def test_the_page_lists_kept_uploads_and_a_click_labels_one(review_server, browser):
    from selenium.webdriver.common.by import By

    url = review_server.url
    images = [encoded(picture(seed, (52, 40)), "PNG") for seed in (40, 41)]
    request_ids = [classify(url, image)["request_id"] for image in images]
    listed(url, set(request_ids))
    # The shadow replay found that a candidate answers the second one differently.
    LocalStore(review_server.log.parent / "predictions").put(SHADOW_FILE, json.dumps({
        "candidate": "candidate:1", "incumbent": review_server.tag, "at": START.isoformat(),
        "since": None, "report": {}, "disagreements": [{
            "sha256": hashlib.sha256(images[1]).hexdigest(), "name": "x.png",
            "incumbent_label": "Circle", "incumbent_probability": 0.4,
            "candidate_label": "Square", "candidate_probability": 0.9}]}).encode())
    browser.get(f"{url}/ui")
    wait(browser, lambda d: set(request_ids) <= set(review_ids(d)))
    marker = review_row(browser, request_ids[1]).find_element(By.CSS_SELECTOR, ".disagree")
    assert marker.is_displayed() and "candidate:1 says Square (90.0%)" in marker.text
    assert f"{review_server.tag} says Circle (40.0%)" in marker.text
    assert not review_row(browser, request_ids[0]).find_element(
        By.CSS_SELECTOR, ".disagree").is_displayed()
    label_one_on_the_page(browser, review_server, request_ids, 52)


@pytest.mark.integration
def test_the_page_asks_for_the_token_and_sends_it(guarded_server, browser):
    from selenium.webdriver.common.by import By

    url = guarded_server.url
    request_ids = [classify(url, encoded(picture(seed, (44, 40)), "PNG"))["request_id"]
                   for seed in (50, 51)]
    listed(url, set(request_ids), {"Authorization": f"Bearer {TOKEN}"})
    browser.get(f"{url}/ui")
    login = browser.find_element(By.ID, "review-login")
    wait(browser, lambda d: login.is_displayed())
    assert "token" in browser.find_element(By.ID, "review-status").text
    browser.find_element(By.ID, "review-token").send_keys(TOKEN)
    login.find_element(By.CSS_SELECTOR, "button").click()
    wait(browser, lambda d: not login.is_displayed())
    # An <img> cannot send the header: the page shows the bytes it fetched with it.
    wait(browser, lambda d: set(request_ids) <= set(review_ids(d)))
    thumb = review_row(browser, request_ids[0]).find_element(By.CSS_SELECTOR, ".thumb")
    wait(browser, lambda d: (thumb.get_attribute("src") or "").startswith("blob:"))
    label_one_on_the_page(browser, guarded_server, request_ids, 44)
