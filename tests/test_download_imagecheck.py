"""The structure check of downloaded images: what it catches, what it leaves to a decode."""

from __future__ import annotations

import io
import struct
import zlib
from unittest import mock

import pytest
from PIL import Image

from flows.openimages import imagecheck
from flows.openimages.download import DownloadOptions, download_images
from flows.openimages.imagecheck import BadImage, check_image, decode_check
from tests.downloadkit import catalog, image_id, image_table, jpeg, palette_png, store_files
from tests.imageserver import ImageServer, SyntheticImages

FAST = DownloadOptions(workers=4, per_host=4, retries=1, backoff=0.01, read_timeout=2.0,
                       deadline=5.0, progress=False)


def encoded(image: Image.Image, kind: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A small image with detail, so that its scans hold stuffed 0xFF bytes."""
    return Image.effect_noise(size, 60).convert("RGB")


def full_decode_fails(body: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(body)) as image:
            image.load()
        return False
    except Exception:  # noqa: BLE001 - any failure means it does not decode
        return True


def segments(body: bytes) -> list[int]:
    """Where each marker segment of a JPEG starts, up to the first scan's data."""
    starts, pos = [], 2
    while body[pos + 1] != 0xDA:
        starts.append(pos)
        pos += 2 + struct.unpack(">H", body[pos + 2:pos + 4])[0]
    return [*starts, pos]


def chunks(body: bytes) -> list[int]:
    """Where each chunk of a PNG starts."""
    starts, pos = [], 8
    while pos < len(body):
        starts.append(pos)
        pos += 12 + struct.unpack(">I", body[pos:pos + 4])[0]
    return starts


VALID = {
    "baseline": lambda: encoded(photo(), "JPEG", quality=90),
    "grayscale": lambda: jpeg(3, mode="L"),
    "progressive": lambda: encoded(photo(), "JPEG", progressive=True),
    "restart markers": lambda: encoded(photo(), "JPEG", restart_marker_blocks=1),
    "4:4:4": lambda: encoded(photo(), "JPEG", subsampling=0),
    "CMYK": lambda: encoded(photo().convert("CMYK"), "JPEG"),
    "synthetic 150 KB": lambda: SyntheticImages(variants=1).image(5),
    "palette PNG": lambda: palette_png(4),
    "RGBA PNG": lambda: encoded(photo().convert("RGBA"), "PNG"),
    "16-bit PNG": lambda: encoded(Image.new("I;16", (20, 10), 300), "PNG"),
}


@pytest.mark.parametrize("name", VALID)
def test_valid_images_pass_without_a_decode(name, monkeypatch):
    body = VALID[name]()
    monkeypatch.setattr(imagecheck, "decode_check", lambda body: pytest.fail("decoded"))
    found = check_image(body)
    with Image.open(io.BytesIO(body)) as image:
        assert (found.format, found.width, found.height) == (image.format, *image.size)
    assert not found.decoded


@pytest.mark.parametrize("name", [n for n in VALID if n != "synthetic 150 KB"])
def test_every_truncation_is_caught(name):
    body = VALID[name]()
    starts = segments(body) if body[:2] == b"\xff\xd8" else chunks(body)
    assert len(starts) >= 3  # PNG: IHDR, IDAT, IEND at least
    for cut in range(len(body)):  # every byte, so every segment and chunk boundary too
        with pytest.raises(BadImage):
            check_image(body[:cut])


def test_truncations_of_a_large_jpeg_at_segment_boundaries_and_in_the_scan():
    body = SyntheticImages(variants=1).image(5)
    cuts = [*segments(body), *(p + 1 for p in segments(body)), *range(700, len(body), 997),
            len(body) - 2, len(body) - 1]
    for cut in cuts:
        with pytest.raises(BadImage, match=r"cut short|damaged|empty"):
            check_image(body[:cut])


@pytest.mark.parametrize("name", ["baseline", "progressive", "grayscale"])
def test_flipped_header_bytes_are_caught_whenever_a_full_decode_catches_them(name):
    body = VALID[name]()
    scan = segments(body)[-1]
    header_end = scan + 2 + struct.unpack(">H", body[scan + 2:scan + 4])[0]
    rejected = 0
    for at in range(header_end):
        damaged = bytearray(body)
        damaged[at] ^= 0xFF
        if full_decode_fails(bytes(damaged)):
            rejected += 1
            with pytest.raises(BadImage):
                check_image(bytes(damaged))
    assert rejected > 50  # the sweep hit markers, lengths, frame and table fields


def test_missing_eoi_and_data_after_it():
    body = VALID["baseline"]()
    assert body.endswith(b"\xff\xd9")
    with pytest.raises(BadImage, match="no EOI"):
        check_image(body[:-2])
    with pytest.raises(BadImage, match="no EOI"):
        check_image(body[:-2] + b"\x00" * 64)
    # Bytes after the EOI are accepted, as decoders accept them (trailers of phones, MPF).
    assert check_image(body + b"trailer" * 10).format == "JPEG"
    assert check_image(body + body).format == "JPEG"


def test_invalid_markers_in_the_scan_are_caught():
    body = VALID["baseline"]()
    scan = segments(body)[-1] + 20
    for marker in (0xD8, 0xC4, 0x02):
        damaged = body[:scan] + bytes([0xFF, marker]) + body[scan + 2:]
        with pytest.raises(BadImage):
            check_image(damaged)


def test_png_crc_and_chunk_damage():
    body = VALID["RGBA PNG"]()
    idat = body.index(b"IDAT")
    flipped = bytearray(body)
    flipped[idat + 10] ^= 0x01  # one bit in the compressed pixels
    with pytest.raises(BadImage, match="CRC mismatch in chunk IDAT"):
        check_image(bytes(flipped))
    with pytest.raises(BadImage, match="cut short"):
        check_image(body[:idat + 40])  # truncated inside IDAT
    no_iend = body[:body.index(b"IEND") - 4]
    with pytest.raises(BadImage, match="no IEND"):
        check_image(no_iend)
    header = bytearray(body)
    header[16:20] = (0).to_bytes(4, "big")  # width 0, CRC made right
    header[29:33] = zlib.crc32(bytes(header[12:29])).to_bytes(4, "big")
    with pytest.raises(BadImage, match="header 0x"):
        check_image(bytes(header))


def test_empty_html_and_unknown_bodies():
    with pytest.raises(BadImage, match="empty"):
        check_image(b"")
    html = b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>"
    with pytest.raises(BadImage, match=r"not a decodable image.*DOCTYPE"):
        check_image(html)
    with pytest.raises(BadImage):
        check_image(b"\xff\xd8\xff")
    with pytest.raises(BadImage):
        check_image(b"\x89PNG\r\n\x1a\n")


def test_what_the_walk_cannot_vouch_for_is_decoded():
    webp = encoded(photo(), "WEBP")
    assert check_image(webp).decoded and check_image(webp).format == "WEBP"
    body = VALID["baseline"]()
    first = segments(body)
    stray = body[:first[1]] + b"\x00\x00" + body[first[1]:]  # libjpeg skips them, warning
    assert check_image(stray).decoded
    dht = [p for p in first if body[p + 1] == 0xC4]
    without_tables = bytearray(body)
    for start in reversed(dht):  # Motion-JPEG style: the decoder's standard tables apply
        length = struct.unpack(">H", body[start + 2:start + 4])[0]
        del without_tables[start:start + 2 + length]
    found = check_image(bytes(without_tables))
    assert found.decoded and found.format == "JPEG"


@pytest.mark.parametrize("pillow_limit", ["default", "lifted"])
def test_a_decompression_bomb_is_refused_from_its_header(pillow_limit, monkeypatch):
    if pillow_limit == "lifted":  # as the upload path does in a process that serves too
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    body = bytearray(VALID["baseline"]())
    sof = next(p for p in segments(bytes(body)) if body[p + 1] == 0xC0)
    body[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    with pytest.raises(BadImage, match="over twice Pillow's limit"):
        check_image(bytes(body))
    webp = Image.new("RGB", (1, 1))
    with pytest.raises(BadImage, match="over twice Pillow's limit"), \
            mock.patch.object(Image.Image, "size", (60000, 60000)):
        decode_check(encoded(webp, "WEBP"))


def test_download_rejects_error_pages_and_damaged_files_without_decoding(tmp_path, monkeypatch):
    good = {image_id(n): jpeg(n) for n in range(1, 4)}
    html = b"<!DOCTYPE html><html><body>Service temporarily unavailable</body></html>"
    damaged = {image_id(10): html, image_id(11): jpeg(11)[:-2],
               image_id(12): VALID["RGBA PNG"]()[:-20], image_id(13): b""}
    decodes = []
    real = imagecheck.decode_check
    monkeypatch.setattr(imagecheck, "decode_check", lambda body: decodes.append(body[:4])
                        or real(body))
    with ImageServer(catalog({**good, **damaged})) as server:
        options = DownloadOptions(**{**FAST.__dict__, "endpoint_url": server.url})
        table = image_table(server.url, {**good, **damaged}, published=False)
        result = download_images(table, tmp_path, options).set_index("ImageID")
    assert (result.loc[list(good)].Status == "ok").all()
    assert (result.loc[list(damaged)].Status == "failed").all()
    errors = result.Error.to_dict()
    assert "DOCTYPE" in errors[image_id(10)]
    assert "no EOI" in errors[image_id(11)]
    assert "cut short" in errors[image_id(12)]
    assert "empty" in errors[image_id(13)]
    assert decodes == [html[:4]]  # only the page that is neither JPEG nor PNG was decoded
    assert sorted(store_files(tmp_path)) == sorted(f"train/{key}.jpg" for key in good)
