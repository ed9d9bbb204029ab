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


# What an upload may cost: limits per format, work bounded by the model's size, lanes.

def test_formats_decoded_at_full_size_have_a_lower_pixel_limit(tmp_path):
    from service.config import Limits
    from service.images import decode_cost

    limits = Limits(max_pixels=1_000_000, max_full_decode_pixels=250_000)
    assert Limits().max_full_decode_pixels < Limits().max_pixels
    photo = Image.new("RGB", (600, 600), (90, 120, 30))
    accepted = {"baseline.jpg": {}, "small.png": {}, "small.webp": {}}
    refused = {"big.png": {}, "big.gif": {}, "big.bmp": {}, "progressive.jpg": {
        "progressive": True}, "big.webp": {}}
    for name, options in {**accepted, **refused}.items():
        size = (200, 200) if name.startswith("small.webp") else (
            (400, 400) if name.startswith("small") else (600, 600))
        photo.resize(size).save(tmp_path / name, **options)
    for name in accepted:
        assert decode_cost(tmp_path / name, 32, limits) > 0
    for name in refused:
        with pytest.raises(BadImage, match="pixel limit") as error:
            decode_cost(tmp_path / name, 32, limits)
        assert error.value.status == 413 and error.value.code == "too_many_pixels"
    # WebP's decoder holds four frame-sized buffers: a quarter of the limit.
    Image.new("RGB", (300, 300)).save(tmp_path / "mid.webp")
    with pytest.raises(BadImage, match="62500 pixel limit for a WebP image"):
        decode_cost(tmp_path / "mid.webp", 32, limits)


def test_a_baseline_jpeg_costs_the_pixels_of_its_scaled_decode(tmp_path):
    from service.images import decode_cost

    Image.new("RGB", (4000, 3000)).save(tmp_path / "big.jpg")
    Image.new("RGB", (4000, 3000)).save(tmp_path / "big.png")
    assert decode_cost(tmp_path / "big.jpg", 150) == 500 * 375  # libjpeg's 1/8 scale
    assert decode_cost(tmp_path / "big.png", 150) == 4000 * 3000


def count_pixels(monkeypatch) -> list[tuple[str, int]]:
    """Record how many pixels every convert, resize and reduce reads."""
    seen: list[tuple[str, int]] = []
    for name in ("convert", "resize", "reduce"):
        original = getattr(Image.Image, name)

        def wrapped(self, *args, _original=original, _name=name, **kwargs):
            box = kwargs.get("box") or (args[1] if _name == "reduce" and len(args) > 1 else None)
            left, top, right, bottom = box or (0, 0, self.width, self.height)
            seen.append((_name, (right - left) * (bottom - top)))  # what it reads
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Image.Image, name, wrapped)
    return seen


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "I;16", "1", "LA"])
def test_no_full_size_copy_or_resize_of_a_large_image(tmp_path, monkeypatch, mode):
    from service.images import STRIP_PIXELS, prepare

    path = tmp_path / "large.png"
    source = Image.new("RGB", (3000, 2000), (200, 40, 40))
    (source.convert(mode) if mode != "I;16" else Image.new("I;16", (3000, 2000), 50000)).save(
        path)
    seen = count_pixels(monkeypatch)
    prepare(path, 64)
    assert seen, "nothing was converted or reduced"
    # Converting the whole 6 Mpx image (or resizing from it) would show up here.
    assert max(pixels for _, pixels in seen) <= STRIP_PIXELS + 3000 * 64
    assert max(pixels for name, pixels in seen if name == "resize") <= (3 * 64 * 2) ** 2


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "I;16", "1"])
def test_reduced_decode_matches_a_full_resize(tmp_path, mode):
    from service.images import prepare, to_rgb

    rng = np.random.default_rng(7)
    y, x = np.mgrid[:900, :1200]
    pixels = np.stack([(x // 7) % 256, (y // 5) % 256, (x + y) // 20 % 256], -1).astype(np.uint8)
    image = Image.fromarray(pixels)
    if mode == "RGBA":
        image.putalpha(Image.fromarray(rng.integers(0, 255, (900, 1200), np.uint8)))
    elif mode == "I;16":
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    elif mode != "RGB":
        image = image.convert(mode)
    path = tmp_path / "x.png"
    image.save(path)
    with Image.open(path) as full:
        expected = np.asarray(to_rgb(full).resize((48, 48), Image.Resampling.BILINEAR), np.int16)
    got = prepare(path, 48).astype(np.int16)
    assert np.abs(got - expected).mean() < 4  # box-reduce first: close, not identical


def test_a_maximum_size_png_decodes_in_a_fraction_of_its_size(tmp_path):
    """In a fresh process, the decode's high-water mark stays near one full-size buffer."""
    import subprocess
    import sys

    from service.config import Limits

    limit = Limits().max_full_decode_pixels
    width, height = 6000, limit // 6000
    path = tmp_path / "max.png"
    grey = Image.linear_gradient("L").resize((width, height))
    Image.merge("RGBA", [grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey, grey]
                ).save(path, compress_level=1)
    code = ("import sys, pathlib; from service.images import prepare; "
            "prepare(pathlib.Path(sys.argv[1]), 150); "
            "print(pathlib.Path('/proc/self/status').read_text().split('VmHWM:')[1].split()[0])")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, check=True, timeout=300)
    peak_mb = int(done.stdout) / 1024
    # The decoded RGBA buffer alone is 4 bytes a pixel; the interpreter, numpy and Pillow ~30.
    assert peak_mb <= 200, f"peak {peak_mb:.0f} MB"


def test_large_decodes_wait_in_their_own_lane(tmp_path, monkeypatch):
    import threading

    import anyio

    from service import images, lanes
    from service.config import Limits

    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (40, 40)).save(small)
    Image.new("RGB", (3000, 2000)).save(large)
    release, running, most = threading.Event(), [0], [0]
    lock = threading.Lock()

    def slow_prepare(path, size, limits):
        if path == large:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            assert release.wait(60), "large decodes were never released"
            with lock:
                running[0] -= 1
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr(images, "prepare", slow_prepare)
    rests: list[float] = []

    async def rest(seconds):
        rests.append(seconds)

    monkeypatch.setattr(lanes, "rest", rest)
    both = lanes.Lanes(threads=2, large_threads=1)
    order: list[str] = []

    async def main() -> None:
        async def upload(path, name):
            await lanes.prepare_all([path], 8, Limits(), both)
            order.append(name)

        async with anyio.create_task_group() as group:
            for i in range(3):
                group.start_soon(upload, large, f"large{i}")
            await anyio.sleep(0.2)  # let the large ones take their lane
            with anyio.fail_after(30):
                await upload(small, "small")  # must not wait behind them
            release.set()

    anyio.run(main)
    assert order[0] == "small" and len(order) == 4
    assert most[0] == 1
    assert len(rests) == 3  # each large decode, and only those, is followed by a rest


def test_memory_goes_back_after_a_large_decode(tmp_path, monkeypatch):
    from service import images

    calls = []
    monkeypatch.setattr(images, "release_memory", lambda: calls.append(1))
    Image.new("RGB", (40, 40)).save(tmp_path / "small.png")
    Image.new("RGB", (3000, 2000)).save(tmp_path / "large.png")
    images.prepare(tmp_path / "small.png", 32)
    assert calls == []
    images.prepare(tmp_path / "large.png", 32)
    assert calls == [1]
