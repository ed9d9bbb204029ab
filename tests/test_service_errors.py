"""Every bad request gets a 4xx JSON answer that says what was wrong, never a 500."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
import requests

from tests.servicekit import encoded, multipart, picture

pytestmark = pytest.mark.integration

JPEG = encoded(picture(0, (64, 48)))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims width x height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def bomb_png() -> bytes:
    """A real 20000 x 20000 1-bit PNG: a few hundred KB that would decode to 1.2 GB of RGB."""
    from PIL import Image

    return encoded(Image.new("1", (20000, 20000)), "PNG", optimize=True)


CASES = {
    # name: (route, files, data, extra request kwargs, status, code)
    "no file": ("/classify", {"top": (None, "2")}, None, {}, 400, "no_file"),
    "empty file": ("/classify", {"image": ("e.jpg", b"")}, None, {}, 400, "empty_file"),
    "non-image bytes": ("/classify", {"image": ("x.jpg", b"hello, not an image" * 10)}, None,
                        {}, 400, "not_an_image"),
    "truncated image": ("/classify", {"image": ("t.jpg", JPEG[: len(JPEG) // 2])}, None, {},
                        400, "truncated_image"),
    "wrong field name": ("/classify", {"file": ("a.jpg", JPEG)}, None, {}, 400,
                         "unexpected_field"),
    "image as text": ("/classify", {"image": (None, "abc")}, None, {}, 400, "not_a_file"),
    "top not a number": ("/classify", {"image": ("a.jpg", JPEG)}, {"top": "many"}, {}, 400,
                         "bad_field"),
    "top sent as a file": ("/classify", {"image": ("a.jpg", JPEG), "top": ("t", b"\xff\xfe")},
                           None, {}, 400, "bad_field"),
    "upload over the size limit": ("/classify", {"image": ("big.jpg", JPEG + b"\0" * 11 * 2**20)},
                                   None, {}, 413, "upload_too_large"),
    "header claims 100000x100000": ("/classify", {"image": ("h.png", png_header_only(
        100_000, 100_000))}, None, {}, 413, "too_many_pixels"),
    "two images to /classify": ("/classify", [("image", ("a.jpg", JPEG))] * 2, None, {}, 413,
                                "too_many_images"),
    "too many images in a batch": ("/classify_batch", [("images", ("a.jpg", JPEG))] * 33, None,
                                   {}, 413, "too_many_images"),
    "bad image in a batch": ("/classify_batch", [("images", ("a.jpg", JPEG)),
                                                 ("images", ("b.jpg", b"GIF89a junk"))],
                             None, {}, 400, "not_an_image"),
    "file name too long": ("/classify", {"image": ("x" * 300 + ".jpg", JPEG)}, None, {}, 400,
                           "bad_filename"),
    "json body": ("/classify", None, None, {"json": {"image": "http://127.0.0.1:9/a.jpg"}}, 415,
                  "unsupported_media_type"),
    "no body at all": ("/classify", None, None, {}, 415, "unsupported_media_type"),
    "urlencoded form": ("/classify", None, {"image": "a"}, {"headers": {
        "Content-Type": "application/x-www-form-urlencoded"}}, 415, "unsupported_media_type"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_requests_get_a_4xx_json_error(classifier_server, name):
    route, files, data, extra, status, code = CASES[name]
    answer = requests.post(f"{classifier_server.url}{route}", files=files, data=data, timeout=60,
                           **extra)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["code"] == code and len(body["error"]) > 10


def test_a_decompression_bomb_is_refused_before_decoding(classifier_server):
    answer = requests.post(f"{classifier_server.url}/classify",
                           files={"image": ("bomb.png", bomb_png())}, timeout=60)
    assert answer.status_code == 413, answer.text
    assert "20000x20000" in answer.json()["error"]


def test_the_batch_error_names_the_bad_image(classifier_server):
    route, files, *_ = CASES["bad image in a batch"]
    body = requests.post(f"{classifier_server.url}{route}", files=files, timeout=60).json()
    assert body["index"] == 1 and body["filename"] == "b.jpg" and "b.jpg" in body["error"]


@pytest.mark.parametrize("body, content_type", [
    (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\nabc",
     "multipart/form-data; boundary=b"),  # never closed
    (b"garbage", "multipart/form-data; boundary=b"),
    (multipart([("image", "a.jpg", JPEG)])[0], "multipart/form-data"),  # no boundary
    (b"--b\r\nContent-Type: text/plain\r\n\r\nabc\r\n--b--\r\n",
     "multipart/form-data; boundary=b"),  # a part without a name
])
def test_malformed_multipart_is_a_400(classifier_server, body, content_type):
    answer = requests.post(f"{classifier_server.url}/classify", data=body, timeout=60,
                           headers={"Content-Type": content_type})
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "malformed_multipart"


def test_top_out_of_range_and_wrong_method_are_json_4xx(classifier_server):
    url = f"{classifier_server.url}/classify"
    zero = requests.post(url, files={"image": ("a.jpg", JPEG)}, data={"top": "0"}, timeout=60)
    assert zero.status_code == 400
    assert zero.json()["code"] == "invalid_input"
    assert zero.json()["error"] == "invalid input: top: Input should be greater than or equal to 1"
    get = requests.get(url, timeout=10)
    assert get.status_code == 405 and get.json()["code"] == "method_not_allowed"
    post_model = requests.post(f"{classifier_server.url}/model", timeout=10)
    assert post_model.status_code == 405 and "error" in post_model.json()


def test_the_size_limit_is_named_in_the_error(classifier_server):
    route, files, *_ = CASES["upload over the size limit"]
    answer = requests.post(f"{classifier_server.url}{route}", files=files, timeout=60)
    assert answer.json()["error"] == "the upload is over the 10 MiB limit"


def test_the_media_type_is_matched_case_insensitively(classifier_server):
    body, content_type = multipart([("image", "a.jpg", JPEG)])
    answer = requests.post(f"{classifier_server.url}/classify", data=body, timeout=60,
                           headers={"Content-Type": content_type.replace("multipart/form-data",
                                                                         "Multipart/Form-Data")})
    assert answer.status_code == 200, answer.text


def test_requests_that_wait_too_long_for_the_model_are_shed_with_503(tmp_path):
    import time

    from tests.servicekit import Load, serve_tiny_model

    # 1 ms: any request that queues behind a running model call waits longer.
    with serve_tiny_model(tmp_path, {"OPENIMAGER_MAX_LATENCY_MS": "1"}) as served, \
            Load(served.url, clients=8, image=JPEG) as load:
        time.sleep(3)
    outcomes = {(a.status, a.code) for a in load.answers}
    assert (200, None) in outcomes and (503, "overloaded") in outcomes, outcomes
    assert outcomes <= {(200, None), (503, "overloaded")}, outcomes


def test_bentoml_error_answers_get_the_service_shape():
    from service.errorshape import reshaped

    validation = {"error": "2 validation errors for Input", "detail": [
        {"type": "greater_than_equal", "loc": ["top"], "msg": "Input should be >= 1"},
        {"type": "missing", "loc": ["body", "image"], "msg": "Field required"}]}
    shaped = json.loads(reshaped(json.dumps(validation).encode(), 400))
    assert shaped == {"error": "invalid input: top: Input should be >= 1; image: Field "
                               "required", "code": "invalid_input",
                      "detail": validation["detail"]}
    other = json.loads(reshaped(b'[{"error": "Not found"}]', 404))
    assert other == {"error": "Not found", "code": "http_404"}
    assert reshaped(b'{"error": "x", "code": "bad_image"}', 400) is None  # already shaped
    assert reshaped(b"not json", 400) is None
