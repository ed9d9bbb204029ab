"""POST /classify with the image as the request body, against one real `bentoml serve`: the
same answers, errors, log rows and OpenAPI entry as the multipart form."""

from __future__ import annotations

import pytest
import requests

from tests.servicekit import encoded, picture
from tests.test_service_api import animated_gif, rotated_jpeg
from tests.test_service_errors import JPEG, bomb_png, png_header_only

pytestmark = pytest.mark.integration

IMAGES = {
    "rgb.jpg": encoded(picture(1)),
    "grey.jpg": encoded(picture(2).convert("L")),
    "exif.jpg": rotated_jpeg(),
    "rgba.png": encoded(picture(4).convert("RGBA"), "PNG"),
    "image.webp": encoded(picture(7), "WEBP"),
    "image.bmp": encoded(picture(8), "BMP"),
    "anim.gif": animated_gif(),
    "big.jpg": encoded(picture(9, (3000, 2000)), quality=70),
}


def raw(server, data: bytes, query: str = "", content_type: str = "image/jpeg",
        **kwargs) -> requests.Response:
    """The image as the request body."""
    headers = {"Content-Type": content_type} if content_type else {}
    return requests.post(f"{server.url}/classify{query}", data=data, headers=headers,
                         timeout=60, **kwargs)


def form(server, data: bytes | None, fields: dict | None = None, name: str = "a.jpg"
         ) -> requests.Response:
    """The image as the multipart field `image`."""
    files = {"image": (name, data)} if data is not None else {"top": (None, "2")}
    return requests.post(f"{server.url}/classify", files=files, data=fields, timeout=60)


@pytest.mark.parametrize("name", list(IMAGES))
def test_both_forms_give_the_same_answer(classifier_server, name):
    data = IMAGES[name]
    # The declared type is not trusted: the decoder reads the format from the bytes.
    body = raw(classifier_server, data, "?top=2", "image/png")
    multi = form(classifier_server, data, {"top": "2"}, name)
    assert body.status_code == multi.status_code == 200, (body.text, multi.text)
    one, other = body.json(), multi.json()
    assert one["labels"] == other["labels"] and len(one["labels"]) == 2
    assert one["model"] == other["model"] == classifier_server.tag
    assert set(one) == set(other) and one["request_id"] != other["request_id"]
    assert body.headers["X-Request-ID"] == one["request_id"]
    assert body.headers["content-type"] == multi.headers["content-type"] == "application/json"


def test_top_defaults_to_three_and_octet_stream_is_taken(classifier_server):
    answer = raw(classifier_server, JPEG, content_type="application/octet-stream")
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["labels"]) == 3
    assert len(raw(classifier_server, JPEG, "?top=50").json()["labels"]) == 3


ERRORS = {
    # name: (raw body, query, content type, form file or None, form fields, status, code)
    "empty body": (b"", "", "image/jpeg", b"", None, 400, "empty_file"),
    "not an image": (b"hello, not an image" * 10, "", "image/jpeg",
                     b"hello, not an image" * 10, None, 400, "not_an_image"),
    "truncated": (JPEG[: len(JPEG) // 2], "", "image/webp", JPEG[: len(JPEG) // 2], None, 400,
                  "truncated_image"),
    "huge dimensions": (png_header_only(100_000, 100_000), "", "image/png",
                        png_header_only(100_000, 100_000), None, 413, "too_many_pixels"),
    "a decompression bomb": (bomb_png(), "", "image/png", bomb_png(), None, 413,
                             "too_many_pixels"),
    "over the size limit": (JPEG + b"\0" * 11 * 2**20, "", "image/jpeg",
                            JPEG + b"\0" * 11 * 2**20, None, 413, "upload_too_large"),
    "top out of range": (JPEG, "?top=0", "image/jpeg", JPEG, {"top": "0"}, 400,
                         "invalid_input"),
    "top too large": (JPEG, "?top=101", "image/jpeg", JPEG, {"top": "101"}, 400,
                      "invalid_input"),
    "top not a number": (JPEG, "?top=many", "image/jpeg", JPEG, {"top": "many"}, 400,
                         "bad_field"),
    "two tops": (JPEG, "?top=1&top=2", "image/jpeg", None, None, 400, "bad_field"),
    "unexpected parameter": (JPEG, "?image=x.jpg", "image/jpeg", None, None, 400,
                             "unexpected_field"),
    "text body": (b"hello", "", "text/plain", None, None, 415, "unsupported_media_type"),
    "no content type": (JPEG, "", "", None, None, 415, "unsupported_media_type"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_both_forms_give_the_same_errors(classifier_server, name):
    data, query, content_type, file, fields, status, code = ERRORS[name]
    answer = raw(classifier_server, data, query, content_type)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["code"] == code and len(body["error"]) > 10
    if file is not None:
        multi = form(classifier_server, file, fields)
        assert (multi.status_code, multi.json()["code"]) == (status, code), multi.text
        if code == "invalid_input":  # word for word, pydantic's detail too
            assert body == multi.json()
        if code in ("too_many_pixels", "upload_too_large"):
            assert body["error"].split(": ")[-1] == multi.json()["error"].split(": ")[-1]


def test_a_wrong_method_and_the_form_still_work(classifier_server):
    get = requests.get(f"{classifier_server.url}/classify", timeout=10,
                       headers={"Content-Type": "image/jpeg"})
    assert (get.status_code, get.json()["code"]) == (405, "method_not_allowed")
    assert form(classifier_server, JPEG).status_code == 200


def test_the_openapi_document_describes_both_forms(classifier_server):
    spec = requests.get(f"{classifier_server.url}/docs.json", timeout=30).json()
    post = spec["paths"]["/classify"]["post"]
    content = post["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "image/png", "application/octet-stream"} \
        <= set(content)
    assert set(content["multipart/form-data"]["schema"]["properties"]) == {"image", "top"}
    assert content["image/jpeg"]["schema"] == {"type": "string", "format": "binary"}
    assert [(p["name"], p["in"]) for p in post["parameters"]] == [("top", "query")]
    assert "application/json" in post["responses"]["200"]["content"]
    assert "multipart/form-data" in spec["paths"]["/classify_batch"]["post"]["requestBody"][
        "content"]


def test_both_forms_are_logged_alike(classifier_server):
    from model.predictions import read_log
    from tests.servicekit import wait_for

    png = encoded(picture(31), "PNG")
    ids = [raw(classifier_server, png).json()["request_id"],
           form(classifier_server, png, name="b.png").json()["request_id"]]
    folder = classifier_server.log.parent / "predictions"

    def logged():
        rows = read_log(folder)
        return rows[rows.request_id.isin(ids)] if len(rows) else rows

    wait_for(lambda: len(logged()) == 2, "both answers in the prediction log", 60, 0.5)
    rows = logged()
    assert list(rows.endpoint) == ["classify", "classify"]
    assert len(set(rows.sha256)) == 1 and list(rows.format) == ["PNG", "PNG"]
    assert (rows.width == 48).all() and (rows.height == 40).all()
    assert rows.top_label.iloc[0] == rows.top_label.iloc[1]


def test_the_query_and_media_type_are_checked_as_the_form_is():
    from service.guard import Rejected
    from service.rawbody import Invalid, checked_top, is_raw

    assert checked_top(b"") == 3 and checked_top(b"top=7") == 7
    for query, code in [(b"top=0", "invalid_input"), (b"top=101", "invalid_input"),
                        (b"top=x", "bad_field"), (b"top=", "bad_field"),
                        (b"top=12345", "bad_field"), (b"top=1&top=2", "bad_field"),
                        (b"image=a.jpg", "unexpected_field")]:
        with pytest.raises(Rejected) as caught:
            checked_top(query)
        assert (caught.value.status, caught.value.code) == (400, code), query
    with pytest.raises(Invalid) as caught:
        checked_top(b"top=0")
    assert caught.value.detail[0]["loc"] == ("top",)
    assert all(map(is_raw, [b"image/jpeg", b"image/x-anything", b"application/octet-stream"]))
    assert not any(map(is_raw, [b"multipart/form-data", b"text/plain", b"", b"application/json"]))
