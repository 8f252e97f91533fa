"""The "not a usable photo" gate, applied before the model (numpy only).

A camera pointed at a mushroom does not produce these, so ``identify`` refuses them without
asking the model (which would name a species for anything):

- too small: the shorter side is below :data:`MIN_SIDE` pixels (a thumbnail, a 1x1 pixel);
- far over-exposed: at least :data:`CLIPPED_SHARE` of the photo is near white
  (luminance >= :data:`WHITE_LEVEL`);
- far under-exposed: at least :data:`CLIPPED_SHARE` of the photo is near black
  (luminance <= :data:`BLACK_LEVEL`);
- near-uniform: the luminance and every colour channel vary by less than
  :data:`MIN_STD` (standard deviation, 0-255 scale) over the photo: one flat colour.

The checks run on the photo's model input (:func:`mushroom.preprocess.load_image`), inside the
area the photo covers (the padding is left out), so the gate sees the pixels the model sees.
"""

from __future__ import annotations

import numpy as np

MIN_SIDE = 64  # px, the shorter side of the photo as stored
WHITE_LEVEL = 250
BLACK_LEVEL = 5
CLIPPED_SHARE = 0.9
MIN_STD = 4.0

TOO_SMALL = "too small"
OVER_EXPOSED = "far over-exposed"
UNDER_EXPOSED = "far under-exposed"
UNIFORM = "near-uniform"
REASONS = (TOO_SMALL, OVER_EXPOSED, UNDER_EXPOSED, UNIFORM)


def content_box(original_size: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """The ``(top, left, height, width)`` of a ``(width, height)`` photo inside its padded model input.

    Mirrors :func:`mushroom.preprocess.resize_with_pad`.
    """
    w, h = original_size
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def _luminance(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def check_pixels(pixels: np.ndarray, original_size: tuple[int, int] | None = None) -> str | None:
    """Why a photo is not usable, in words (None: usable).

    Args:
        pixels: The model input ``(size, size, 3)``, 0-255.
        original_size: The photo's ``(width, height)`` as stored; None: the pixels are the
            whole photo (no padding, no size check).

    Returns:
        A reason starting with one of :data:`REASONS`, or None.
    """
    pixels = np.asarray(pixels)
    if original_size is not None:
        w, h = original_size
        if min(w, h) < MIN_SIDE:
            return f"{TOO_SMALL} ({w}x{h} px; at least {MIN_SIDE} px on the shorter side)"
        top, left, nh, nw = content_box(original_size, pixels.shape[0])
        pixels = pixels[top:top + nh, left:left + nw]
    luminance = _luminance(pixels)
    white = float(np.mean(luminance >= WHITE_LEVEL))
    if white >= CLIPPED_SHARE:
        return f"{OVER_EXPOSED} ({white:.0%} of the photo is white)"
    black = float(np.mean(luminance <= BLACK_LEVEL))
    if black >= CLIPPED_SHARE:
        return f"{UNDER_EXPOSED} ({black:.0%} of the photo is black)"
    spread = max(float(luminance.std()), *(float(pixels[..., c].std()) for c in range(3)))
    if spread < MIN_STD:
        return f"{UNIFORM} (one flat colour: pixel values vary by {spread:.1f} of 255)"
    return None


def check_batch(images: np.ndarray, original_sizes: list[tuple[int, int]] | None = None) -> list[str | None]:
    """:func:`check_pixels` for each image of ``(n, size, size, 3)``."""
    sizes = original_sizes or [None] * len(images)
    return [check_pixels(image, size) for image, size in zip(images, sizes, strict=True)]


def photo_size(source) -> tuple[int, int]:
    """The ``(width, height)`` of a photo file or bytes as stored (EXIF rotation applied), from its header."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else source) as image:
        w, h = image.size
        try:
            orientation = image.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - damaged EXIF: the decoder reports the real problem later
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
