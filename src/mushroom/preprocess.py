"""The one preprocessing path shared by training, quantization, evaluation and ``identify``.

It needs only numpy and Pillow (``identify`` must run without TensorFlow). The model is
fed RGB pixels in the 0-255 range at its input size; pixel scaling lives inside the model.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Decompression-bomb guard stays on, but phone photos (up to ~100 MP) must open.
Image.MAX_IMAGE_PIXELS = 200_000_000


class ImageError(ValueError):
    """A photo cannot be used: missing, empty, not an image, or truncated."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode (L, P, CMYK, RGBA, I;16, ...) to RGB; transparency over white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode.startswith("I;16") or image.mode == "I":
        arr = np.asarray(image, dtype=np.float64)
        top = arr.max() or 1.0
        return Image.fromarray((arr / top * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def resize_with_pad(image: Image.Image, size: int) -> np.ndarray:
    """Scale the longer side to ``size`` (aspect kept) and pad with black to a square.

    Returns:
        ``uint8`` array of shape ``(size, size, 3)``.
    """
    w, h = image.size
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def _open(source: str | Path | bytes, size_hint: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`open_image`, and the photo's ``(width, height)`` as stored (EXIF rotation applied)."""
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    if not isinstance(source, bytes | bytearray):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{name}: file not found")
        if path.is_dir():
            raise ImageError(f"{name}: is a directory with no photo files in it (JPEG, PNG, ...)")
        source = path.read_bytes()
    if len(source) == 0:
        raise ImageError(f"{name}: file is empty")
    try:
        image = Image.open(io.BytesIO(source))
        stored = image.size
        if size_hint and image.format == "JPEG":
            image.draft("RGB", (2 * size_hint, 2 * size_hint))
        image.load()
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read (JPEG, PNG, WebP, ...)") from None
    except OSError as err:  # truncated or damaged image data
        raise ImageError(f"{name}: not a readable image ({err})") from None
    drawn = image.size
    image = ImageOps.exif_transpose(image)
    turned = image.size != drawn and image.size == drawn[::-1]
    return to_rgb(image), (stored[::-1] if turned else stored)


def open_image(source: str | Path | bytes, size_hint: int | None = None) -> Image.Image:
    """Open and fully decode a photo, with EXIF orientation applied, as RGB.

    Args:
        source: A path or the file's bytes.
        size_hint: The side the photo will be resized to; a JPEG much larger than that is
            decoded at a reduced scale (still at least ``2 * size_hint`` on each side), which
            makes a 12-megapixel photo several times faster to read.
    """
    return _open(source, size_hint)[0]


#: File suffixes taken when a folder of photos is given (case-insensitive).
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


def expand_photos(paths: list[str | Path]) -> list[str]:
    """Files as given; folders replaced by the photo files inside them, recursively and sorted.

    A folder contributes only files whose suffix is in :data:`PHOTO_SUFFIXES`; a folder with
    none, or a path that does not exist, is kept, so that reading it reports the error.
    """
    photos: list[str] = []
    for path in map(Path, paths):
        found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES) \
            if path.is_dir() else []
        photos += found or [str(path)]
    return photos


def _decoded(source: str | Path | bytes, size: int) -> tuple[Image.Image, tuple[int, int]]:
    image, stored = _open(source, size_hint=size)
    if max(image.size) > 4 * size:
        # Fast pre-shrink for very large photos; the final resize does the exact scaling.
        image.thumbnail((4 * size, 4 * size), Image.Resampling.BOX)
    return image, stored


def load_image(source: str | Path | bytes, size: int) -> np.ndarray:
    """Read a photo and return the model input: ``uint8`` RGB, ``(size, size, 3)``, 0-255."""
    return load_image_with_size(source, size)[0]


def load_image_with_size(source: str | Path | bytes, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image`, and the photo's ``(width, height)`` as stored (EXIF rotation applied),
    from one read of the file."""
    image, stored = _decoded(source, size)
    return resize_with_pad(image, size), stored


#: The longer side (px) of :attr:`Photo.detail`.
DETAIL_SIDE = 256


@dataclass(frozen=True)
class Photo:
    """A photo read for ``identify``: the model input and what the quality gate looks at.

    Attributes:
        pixels: The model input, exactly :func:`load_image`'s.
        stored_size: ``(width, height)`` of the photo as stored, EXIF rotation applied.
        detail: The decoded photo reduced to at most :data:`DETAIL_SIDE` px on its longer
            side (``uint8`` RGB): finer than the model input, so pixel noise still shows.
    """

    pixels: np.ndarray
    stored_size: tuple[int, int]
    detail: np.ndarray


def read_photo(source: str | Path | bytes, size: int) -> Photo:
    """Read a photo once: its model input (as :func:`load_image`), stored size and detail."""
    image, stored = _decoded(source, size)
    pixels = resize_with_pad(image, size)
    image.thumbnail((DETAIL_SIDE, DETAIL_SIDE), Image.Resampling.BOX)
    return Photo(pixels, stored, np.asarray(image, dtype=np.uint8))
