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
