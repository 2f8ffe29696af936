"""Odd but valid images convert correctly; unusable files fail with a specific reason."""

import numpy as np
import pytest
from PIL import Image

from petlab.data.images import MAX_PIXELS, BadImageError, load_rgb
from tests.imaging import encode, jpeg_bytes, png_bomb, write_bad_files


def test_grayscale_becomes_rgb_with_equal_channels():
    out = load_rgb(encode(Image.new("L", (20, 10), 77), "PNG"))
    assert out.mode == "RGB" and out.size == (20, 10)
    assert np.asarray(out)[5, 5].tolist() == [77, 77, 77]


def test_palette_with_transparency_is_composited_on_white():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    img.info["transparency"] = 0  # index 0 (red) is fully transparent
    out = load_rgb(encode(img, "PNG", transparency=0))
    assert np.asarray(out)[0, 0].tolist() == [255, 255, 255]


def test_plain_palette_keeps_its_colour():
    img = Image.new("RGB", (8, 8), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    out = np.asarray(load_rgb(encode(img, "GIF")))
    assert np.abs(out[0, 0].astype(int) - [10, 200, 30]).max() <= 8


def test_rgba_half_transparent_black_blends_to_grey():
    out = load_rgb(encode(Image.new("RGBA", (4, 4), (0, 0, 0, 128)), "PNG"))
    assert np.asarray(out)[0, 0].tolist() == [127, 127, 127]


def test_cmyk_jpeg_converts_to_rgb():
    cmyk = Image.new("RGB", (16, 16), (0, 0, 255)).convert("CMYK")
    out = np.asarray(load_rgb(encode(cmyk, "JPEG", quality=95)))
    assert out[8, 8, 2] > 200 and out[8, 8, 0] < 60


def test_sixteen_bit_png_is_scaled_not_clipped():
    arr = np.full((10, 10), 32768, np.uint16)  # mid-grey in 16 bits
    out = np.asarray(load_rgb(encode(Image.fromarray(arr), "PNG")))
    assert out.dtype == np.uint8 and abs(int(out[0, 0, 0]) - 128) <= 1


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    out = load_rgb(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = np.asarray(load_rgb(data))
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_one_pixel_image_loads():
    assert load_rgb(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG")).size == (1, 1)


def test_each_bad_file_kind_has_its_reason(tmp_path):
    for reason, path in write_bad_files(tmp_path).items():
        with pytest.raises(BadImageError) as info:
            load_rgb(path)
        assert info.value.reason == reason, path


def test_zero_bytes_in_memory_is_empty():
    with pytest.raises(BadImageError) as info:
        load_rgb(b"")
    assert info.value.reason == "empty"


def test_decompression_bomb_is_refused_before_decoding():
    side = int(MAX_PIXELS**0.5) + 100
    data = encode(Image.new("1", (side, side)), "PNG")  # tiny file, huge image
    with pytest.raises(BadImageError) as info:
        load_rgb(data)
    assert info.value.reason == "too_large"


def test_good_jpeg_round_trips():
    assert load_rgb(jpeg_bytes()).size == (80, 64)


def test_thirty_thousand_pixel_square_png_is_refused():
    with pytest.raises(BadImageError) as info:
        load_rgb(png_bomb(30000))
    assert info.value.reason == "too_large" and "900000000 pixels" in str(info.value)


def test_the_recorded_interpolation_is_the_one_used_to_resize():
    import torch

    from petlab.data.transforms import Preprocessing

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    squares = {mode: Preprocessing(64, 73, (0.5,) * 3, (0.5,) * 3, mode).square(photo)
               for mode in ("bilinear", "nearest", "bicubic")}
    assert not torch.equal(squares["bilinear"], squares["nearest"])
    assert not torch.equal(squares["bilinear"], squares["bicubic"])
    # nearest takes existing pixel values, no blends
    assert set(squares["nearest"][0, 0].tolist()) <= set(np.asarray(photo)[:, :, 0].ravel().tolist())
    assert Preprocessing.from_dict(Preprocessing(64, 73, (0.5,) * 3, (0.5,) * 3, "nearest").to_dict()) \
        .square(photo).equal(squares["nearest"])
    with pytest.raises(ValueError):
        Preprocessing(64, 73, (0.5,) * 3, (0.5,) * 3, "sinc")


def odd_mode_image(mode: str, size=(301, 203)) -> Image.Image:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    if mode == "P":
        img = Image.fromarray(rng.integers(0, 4, size[::-1], dtype=np.uint8), "L").convert("P")
        img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] * 64)
        img.info["transparency"] = 0
        return img
    return Image.fromarray(rng.integers(0, 255, (*size[::-1], len(mode)), dtype=np.uint8), mode)


@pytest.mark.parametrize("mode", ["I;16", "P", "RGBA", "LA", "RGB"])
def test_shrinking_a_strip_at_a_time_gives_what_converting_the_whole_would(mode, monkeypatch):
    """The server converts and shrinks large photos a strip at a time, so no full-size copy exists (16-bit and
    palette photos once went through a full-size float64 or RGBA copy): the pixels are the same."""
    from petlab.data import images

    monkeypatch.setattr(images, "STRIP_PIXELS", 301 * 9)  # several strips, the last one partial
    img = odd_mode_image(mode)
    whole = images._to_rgb(img).reduce(3)
    strips = images.reduced_rgb(img, 3)
    assert strips.size == whole.size == (101, 68)
    assert np.abs(np.asarray(strips, np.int16) - np.asarray(whole, np.int16)).max() <= 1


def test_the_decoded_size_is_bounded_in_bytes_from_the_header():
    big = encode(Image.new("RGBA", (3000, 2000)), "PNG")  # 6 MP, 24 MB decoded
    with pytest.raises(BadImageError) as info:
        load_rgb(big, max_decoded_bytes=16 * 2**20)
    assert info.value.reason == "too_large" and "23 MB decoded, over 16 MB" in str(info.value)
    assert load_rgb(encode(Image.new("L", (3000, 2000)), "PNG"), max_decoded_bytes=16 * 2**20).size == (3000, 2000)


def test_ordinary_photos_pass_a_heavy_decode_and_heavy_ones_wait_their_turn():
    """The server's decode budget: one heavy decode at a time; an ordinary photo never waits behind it."""
    import threading

    from petlab.serving import DecodeBudget

    budget, events = DecodeBudget(total_bytes=100, heavy_bytes=10), []
    first_heavy_in, release = threading.Event(), threading.Event()

    def heavy(name):
        with budget.reserve(40):
            events.append(f"{name} in")
            first_heavy_in.set()
            release.wait(5)

    first = threading.Thread(target=heavy, args=("heavy 1",))
    first.start()
    assert first_heavy_in.wait(5)
    second = threading.Thread(target=heavy, args=("heavy 2",))
    second.start()
    with budget.reserve(5):  # while heavy 1 runs and heavy 2 waits
        events.append("light in")
    release.set()
    first.join(5), second.join(5)
    assert events == ["heavy 1 in", "light in", "heavy 2 in"]
