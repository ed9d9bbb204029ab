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


def test_prepare_decodes_once_to_the_model_size(tmp_path):
    from service.images import prepare

    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (200, 40, 40)).save(path, quality=80)
    pixels = prepare(path, 150)
    assert pixels.shape == (150, 150, 3) and pixels.dtype == np.uint8
    assert abs(int(pixels[..., 0].mean()) - 200) < 5  # colours survive the scaled decode


@pytest.mark.parametrize("orientation", range(1, 9))
def test_prepare_turns_upright_like_exif_transpose(tmp_path, orientation):
    from PIL import ImageOps

    from service.images import prepare

    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = np.random.default_rng(orientation).integers(0, 255, (40, 60, 3), np.uint8)
    path = tmp_path / "turned.png"
    Image.fromarray(pixels).save(path, exif=exif)
    expected = ImageOps.exif_transpose(Image.open(path)).resize((32, 32), Image.BILINEAR)
    np.testing.assert_array_equal(prepare(path, 32), np.asarray(expected))


def test_transparency_becomes_white_and_gifs_give_their_first_frame(tmp_path):
    from service.images import prepare

    clear = tmp_path / "clear.png"
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(clear)
    assert prepare(clear, 8).min() == 255
    gif = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    first = prepare(gif, 8)
    assert first[..., 0].mean() > 200 and first[..., 2].mean() < 50


def test_only_the_five_formats_are_opened(tmp_path):
    path = tmp_path / "x.tiff"
    Image.new("RGB", (10, 10)).save(path)
    with pytest.raises(BadImage, match="not a JPEG, PNG, WebP, BMP or GIF image"):
        load_rgb(path)
