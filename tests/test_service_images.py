"""Upload decoding for the service: RGB out, clear errors for what is not an image."""

import numpy as np
import pytest
from PIL import Image

from service.images import BadImage, load_rgb


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / ("x.png" if mode in {"P", "RGBA"} else "x.jpg")
    Image.new("RGB", (30, 20), (10, 200, 30)).convert(mode).save(path)
    pixels = load_rgb(path)
    assert pixels.shape == (20, 30, 3) and pixels.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    path = tmp_path / "x.jpg"
    Image.new("RGB", (30, 20)).save(path, exif=exif)
    assert load_rgb(path).shape == (30, 20, 3)


@pytest.mark.parametrize("content", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n broken"])
def test_non_images_are_rejected_with_a_reason(tmp_path, content):
    path = tmp_path / "x.bin"
    path.write_bytes(content)
    with pytest.raises(BadImage):
        load_rgb(path)


def test_pixel_bombs_are_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("1", (5000, 5000)).save(path)
    with pytest.raises(BadImage, match="pixel limit"):
        load_rgb(path, max_pixels=1_000_000)
