import io

import numpy as np
import pytest
from PIL import Image

from mushroom.preprocess import ImageError, load_image


def _bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_resize_with_pad_keeps_aspect_ratio():
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    out = load_image(_bytes(wide, "PNG"), 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out[32, :, 0] == 255).all()  # the middle row is all image
    assert (out[:14, :, :] == 0).all() and (out[-14:, :, :] == 0).all()  # padded top and bottom


def test_exif_orientation_is_applied():
    tall = Image.new("RGB", (40, 80), (0, 0, 255))
    tall.paste((255, 255, 0), (0, 0, 40, 20))  # yellow at the top
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: viewers turn it 90 degrees clockwise
    out = load_image(_bytes(tall, "JPEG", exif=exif, quality=95), 80)
    # After rotation the photo is wide; the yellow band ends up on the right.
    assert out[40, 75, 0] > 200 and out[40, 75, 2] < 80
    assert out[5, 40].max() < 20  # padded top


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA"])
def test_modes_convert_to_rgb(mode):
    image = Image.new("RGB", (30, 30), (10, 200, 30)).convert(mode)
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    out = load_image(_bytes(image, fmt), 32)
    assert out.shape == (32, 32, 3)


def test_transparent_png_composited_on_white():
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    out = load_image(_bytes(image, "PNG"), 20)
    assert (out == 255).all()


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "missing.jpg", 32)
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path, 32)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(empty, 32)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(ImageError, match=r"notes.jpg: not an image file Pillow can read \(JPEG, PNG") as caught:
        load_image(text, 32)
    assert "BytesIO" not in str(caught.value)  # no object repr in the message
    data = _bytes(Image.new("RGB", (200, 200), (1, 2, 3)), "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(truncated, 32)


def test_folders_expand_to_their_photo_files(tmp_path):
    from mushroom.preprocess import expand_photos

    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/deep/z.JPG", "a/b.png", "a/notes.txt", "c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    given = [tmp_path / "a", tmp_path / "c.jpg", tmp_path / "empty", tmp_path / "missing.jpg"]
    assert expand_photos(given) == [str(tmp_path / n) for n in ("a/b.png", "a/deep/z.JPG", "c.jpg", "empty",
                                                                 "missing.jpg")]


def test_very_large_photo():
    big = Image.new("RGB", (6000, 4000), (90, 60, 30))
    out = load_image(_bytes(big, "JPEG"), 96)
    assert out.shape == (96, 96, 3)
    assert abs(int(out[48, 48, 0]) - 90) < 4
