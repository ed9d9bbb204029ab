"""The classification API over HTTP against one real `bentoml serve` of a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from PIL import Image

from tests.servicekit import CLASSES, IMAGE_SIZE, MIDS, encoded, multipart, picture

pytestmark = pytest.mark.integration


def post(server, files=None, data=None, route="/classify", **kwargs) -> requests.Response:
    """POST to the server and return the response."""
    return requests.post(f"{server.url}{route}", files=files, data=data, timeout=60, **kwargs)


def test_classify_answers_labels_the_model_tag_and_the_time(classifier_server):
    keras = pytest.importorskip("keras")
    image = picture(3, (IMAGE_SIZE, IMAGE_SIZE))  # the model's size: no resizing to compare
    answer = post(classifier_server, {"image": ("shape.png", encoded(image, "PNG"))})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == classifier_server.tag
    assert isinstance(body["seconds"], float) and body["seconds"] > 0
    assert [e["label"] for e in body["labels"]] and len(body["labels"]) == 3
    assert {e["label"]: e["mid"] for e in body["labels"]} == dict(zip(CLASSES, MIDS, strict=True))
    probs = [e["probability"] for e in body["labels"]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
    model = keras.saving.load_model(classifier_server.model_file, compile=False)
    expected = model.predict(np.asarray(image)[None], verbose=0)[0]
    for entry in body["labels"]:
        assert entry["probability"] == pytest.approx(expected[CLASSES.index(entry["label"])],
                                                     abs=1e-4)


def test_top_limits_the_labels(classifier_server):
    files = {"image": ("a.jpg", encoded(picture(1)))}
    assert len(post(classifier_server, files, {"top": "1"}).json()["labels"]) == 1
    assert len(post(classifier_server, files, {"top": "50"}).json()["labels"]) == 3


def test_batch_keeps_order_names_and_matches_single_answers(classifier_server):
    images = [encoded(picture(seed, (60 + seed, 40))) for seed in range(5)]
    files = [("images", (f"img{i}.jpg", data)) for i, data in enumerate(images)]
    answer = post(classifier_server, files, {"top": "2"}, route="/classify_batch")
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["filename"] for r in results] == [f"img{i}.jpg" for i in range(5)]
    for data, result in zip(images, results, strict=True):
        single = post(classifier_server, {"image": ("x.jpg", data)}, {"top": "2"}).json()
        # The same labels; a probability may differ in its last printed digit, as a batch of
        # five and a batch of one take different float paths through the model.
        assert [e["label"] for e in result["labels"]] == [e["label"] for e in single["labels"]]
        assert all(abs(a["probability"] - b["probability"]) < 1e-5
                   for a, b in zip(result["labels"], single["labels"], strict=True))


def test_model_reports_its_lineage(classifier_server):
    info = requests.get(f"{classifier_server.url}/model", timeout=10).json()
    assert info["tag"] == classifier_server.tag
    assert info["classes"] == [{"name": c, "mid": m} for c, m in zip(CLASSES, MIDS, strict=True)]
    assert info["image_size"] == IMAGE_SIZE and info["dataset_id"] == "tiny-dataset"
    assert info["git_commit"] == "0" * 40
    assert info["metrics"] == {"accuracy": 0.5, "macro_f1": 0.4, "test_examples": 6}
    assert info["package"] is None and info["top_hash"] is None and info["promoted_at"] is None
    assert info["source"] == "env"


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(picture(5, (40, 64)), exif=exif)


def animated_gif() -> bytes:
    frames = [picture(i).convert("P") for i in range(3)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


@pytest.mark.parametrize("name, data", [
    ("rgb.jpg", encoded(picture(1))),
    ("grey.jpg", encoded(picture(2).convert("L"))),
    ("cmyk.jpg", encoded(picture(3).convert("CMYK"))),
    ("exif.jpg", rotated_jpeg()),
    ("rgba.png", encoded(picture(4).convert("RGBA"), "PNG")),
    ("palette.png", encoded(picture(5).convert("P"), "PNG", transparency=0)),
    ("grey16.png", encoded(picture(6).convert("L").convert("I;16"), "PNG")),
    ("image.webp", encoded(picture(7), "WEBP")),
    ("image.bmp", encoded(picture(8), "BMP")),
    ("anim.gif", animated_gif()),
    ("big.jpg", encoded(picture(9, (3000, 2000)), quality=70)),
])
def test_every_supported_format_and_mode_is_classified(classifier_server, name, data):
    answer = post(classifier_server, {"image": (name, data, "application/octet-stream")})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["labels"]) == 3


def test_health_openapi_and_swagger_stay_available(classifier_server):
    url = classifier_server.url
    assert requests.get(f"{url}/livez", timeout=10).status_code == 200
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
    assert "swagger" in requests.get(f"{url}/", timeout=10).text.lower()
    spec = requests.get(f"{url}/docs.json", timeout=10).json()
    assert {"/classify", "/classify_batch"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/classify"]["post"]["requestBody"]["content"]


def test_the_url_in_place_of_a_file_is_refused_not_fetched(classifier_server):
    # BentoML would download a URL sent in a file field; the guard refuses it.
    answer = post(classifier_server, {"image": (None, "http://127.0.0.1:9/never.jpg")})
    assert answer.status_code == 400
    assert answer.json()["code"] == "not_a_file"


def test_multipart_body_helper_matches_requests(classifier_server):
    body, content_type = multipart([("image", "a.jpg", encoded(picture(0)))])
    answer = post(classifier_server, data=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text
