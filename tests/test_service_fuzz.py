"""Fuzzing the real server: hundreds of mutated uploads, as forms and as raw bodies, zero 5xx,
and it still works after."""

from __future__ import annotations

import random
import struct
import zlib
from collections import Counter
from collections.abc import Callable

import pytest
import requests

from tests.servicekit import encoded, multipart, picture

pytestmark = pytest.mark.integration

SEED = 20260509
ROUNDS = 600
Mutator = Callable[[random.Random, bytes], bytes]


def seeds() -> dict[str, bytes]:
    """Valid images of every accepted format to mutate."""
    image = picture(1, (64, 48))
    return {"jpg": encoded(image), "png": encoded(image.convert("RGBA"), "PNG"),
            "gif": encoded(image.convert("P"), "GIF"), "webp": encoded(image, "WEBP"),
            "bmp": encoded(image, "BMP")}


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(1, len(data))]


def flip_bits(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 24)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def overwrite(rng: random.Random, data: bytes) -> bytes:
    start = rng.randrange(len(data))
    length = rng.randint(1, 64)
    return data[:start] + rng.randbytes(length) + data[start + length:]


def wrong_header(rng: random.Random, data: bytes) -> bytes:
    magic = rng.choice([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"RIFF\0\0\0\0WEBP",
                        b"BM", b"II*\0", b"%PDF-1.4", b"\x00" * 8])
    return magic + data[len(magic):]


def huge_dimensions(rng: random.Random, data: bytes) -> bytes:
    """Claim a huge (or absurd) width and height in the header of a small file."""
    width, height = rng.choice([(65535, 65535), (100_000, 100_000), (1, 2**31 - 1),
                                (0, 0), (40_000, 1_001)])
    out = bytearray(data)
    if data.startswith(b"\x89PNG"):
        out[16:24] = struct.pack(">II", width, height)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])) & 0xFFFFFFFF)
    elif data.startswith(b"GIF"):
        out[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    elif data.startswith(b"BM"):
        out[18:26] = struct.pack("<ii", width, min(height, 2**31 - 1))
    elif (sof := data.find(b"\xff\xc0")) > 0:
        out[sof + 5:sof + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    elif data.startswith(b"RIFF"):
        out[26:30] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    return bytes(out)


def random_bytes(rng: random.Random, data: bytes) -> bytes:
    return rng.randbytes(rng.randint(1, 4096))


def splice(rng: random.Random, data: bytes) -> bytes:
    cut = rng.randrange(len(data))
    return data[:cut] + data[rng.randrange(len(data)):] * rng.randint(1, 3)


MUTATORS: list[Mutator] = [truncate, flip_bits, overwrite, wrong_header, huge_dimensions,
                           random_bytes, splice]
NAMES = ["a.jpg", "", "../../etc/passwd", "ünïcødé.png", "x" * 250, "a\x01b.gif", "C:\\x.bmp",
         "a\"b.jpg", "a;b=c.webp"]


def request_for(rng: random.Random, images: dict[str, bytes]) -> dict:
    """One mutated request: mostly mutated files, some broken forms and headers."""
    data = rng.choice(MUTATORS)(rng, images[rng.choice(list(images))])
    name = rng.choice(NAMES) if rng.random() < 0.3 else "upload.bin"
    roll = rng.random()
    if roll < 0.70:
        return {"url": "/classify", "files": {"image": (name, data)}}
    if roll < 0.80:
        files = [("images", (name, data))] + [
            ("images", (f"{i}.x", rng.choice(MUTATORS)(rng, rng.choice(list(images.values())))))
            for i in range(rng.randint(0, 3))]
        return {"url": "/classify_batch", "files": files,
                "data": {"top": rng.choice(["1", "3", "0", "-1", "1e9", "[[[]]]", "\u00e9"])}}
    if roll < 0.88:
        field = rng.choice(["file", "img", "images", "top", "", "image[]"])
        return {"url": "/classify", "files": {field: (name, data)}}
    if roll < 0.95:
        body, content_type = multipart([("image", "a.jpg", data)])
        cut = body[: rng.randrange(len(body))] if rng.random() < 0.5 else flip_bits(rng, body)
        return {"url": "/classify", "data": cut, "headers": {"Content-Type": content_type}}
    content_type = rng.choice(["image/jpeg", "application/json", "multipart/form-data",
                               "multipart/form-data; boundary=", "text/plain", "multipart/mixed"])
    return {"url": "/classify", "data": data, "headers": {"Content-Type": content_type}}


def fuzzed(base: str, session: requests.Session, rounds: int,
           make: Callable[[], dict]) -> tuple[Counter[int], Counter[str], list]:
    """Send rounds mutated requests from make(): the statuses, the error codes, and the
    failures (a 5xx, or a 4xx without the service's error shape)."""
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    failures = []
    for round_ in range(rounds):
        spec = make()
        answer = session.post(base + spec.pop("url"), timeout=30, **spec)
        statuses[answer.status_code] += 1
        body = answer.json()  # every answer is JSON, errors included
        codes[body.get("code", "")] += 1
        if answer.status_code >= 500 or (answer.status_code >= 400 and "error" not in body):
            failures.append((round_, answer.status_code, answer.text[:200]))
    return statuses, codes, failures


def test_hundreds_of_mutated_uploads_get_no_5xx(classifier_server):
    rng = random.Random(SEED)
    images = seeds()
    with requests.Session() as session:
        statuses, _, failures = fuzzed(classifier_server.url, session, ROUNDS,
                                       lambda: request_for(rng, images))
        final = session.post(f"{classifier_server.url}/classify",
                             files={"image": ("ok.jpg", images["jpg"])}, timeout=30)
    assert not failures, failures
    assert sum(statuses.values()) == ROUNDS
    assert statuses[200] > 20 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 300
    assert final.status_code == 200 and len(final.json()["labels"]) == 3


RAW_TYPES = ["image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/x-what",
             "application/octet-stream", "IMAGE/JPEG", "image/jpeg; charset=utf-8"]
QUERIES = ["", "", "", "?top=1", "?top=0", "?top=-1", "?top=1e9", "?top=%00", "?top=",
           "?top=3&top=4", "?x=1", "?top=99999", "?top=\u00e9"]
RAW_ROUNDS = 400


def raw_request_for(rng: random.Random, images: dict[str, bytes]) -> dict:
    """One mutated raw body: truncated, wrong type, huge dimensions, empty, random bytes."""
    roll = rng.random()
    if roll < 0.05:
        data = b""
    elif roll < 0.20:
        data = huge_dimensions(rng, images[rng.choice(list(images))])
    else:
        data = rng.choice(MUTATORS)(rng, images[rng.choice(list(images))])
    return {"url": "/classify" + rng.choice(QUERIES), "data": data,
            "headers": {"Content-Type": rng.choice(RAW_TYPES)}}


def test_hundreds_of_mutated_raw_bodies_get_no_5xx(classifier_server):
    rng = random.Random(SEED + 1)
    images = seeds()
    with requests.Session() as session:
        statuses, codes, failures = fuzzed(classifier_server.url, session, RAW_ROUNDS,
                                           lambda: raw_request_for(rng, images))
        final = session.post(f"{classifier_server.url}/classify", data=images["png"],
                             headers={"Content-Type": "image/png"}, timeout=30)
    assert not failures, failures
    assert sum(statuses.values()) == RAW_ROUNDS
    assert statuses[200] > 10 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 300
    # the body's cases were all met: empty, not an image, truncated, too many pixels
    assert {"empty_file", "not_an_image", "truncated_image", "too_many_pixels"} <= set(codes)
    assert final.status_code == 200 and len(final.json()["labels"]) == 3
