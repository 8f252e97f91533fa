"""The "not a usable photo" gate, applied before the model (numpy only).

A camera pointed at a mushroom does not produce these, so ``identify`` refuses them without
asking the model (which would name a species for anything):

- too small: the shorter side is below :data:`MIN_SIDE` pixels (a thumbnail, a 1x1 pixel);
- far over-exposed: at least :data:`CLIPPED_SHARE` of the photo is near white
  (luminance >= :data:`WHITE_LEVEL`);
- far under-exposed: at least :data:`CLIPPED_SHARE` of the photo is near black
  (luminance <= :data:`BLACK_LEVEL`);
- near-uniform: the luminance and every colour channel vary by less than
  :data:`MIN_STD` (standard deviation, 0-255 scale) over the photo: one flat colour;
- pixel noise: neighbouring pixels are unrelated. Optics, demosaicing and compression make
  neighbouring pixels of any camera photo alike: the correlation of each pixel's luminance
  with its right and lower neighbour, in the photo reduced to at most 256 px
  (:attr:`mushroom.preprocess.Photo.detail`), was at least 0.59 on the 14 real photos that
  ship with scikit-learn and scikit-image and 20 random crops of each (grass is the lowest),
  and at least 0.79 on the synthetic drawings; on noise images (uniform, Gaussian, salt and
  pepper, 64 to 3,000 px, PNG or JPEG) it is -0.03 to 0.01. The gate refuses below
  :data:`MIN_NEIGHBOUR_CORRELATION`. Reduced to a small model input, noise averages out to a
  near-flat grey that neither this check nor the model would set apart, which is why the
  check looks at the finer detail.

The other checks run on the photo's model input (:func:`mushroom.preprocess.load_image`), inside
the area the photo covers (the padding is left out), so the gate sees the pixels the model sees.
"""

from __future__ import annotations

import numpy as np

MIN_SIDE = 64  # px, the shorter side of the photo as stored
WHITE_LEVEL = 250
BLACK_LEVEL = 5
CLIPPED_SHARE = 0.9
MIN_STD = 4.0
MIN_NEIGHBOUR_CORRELATION = 0.2
MIN_DETAIL_SIDE = 16  # px: below this the correlation is not measured

TOO_SMALL = "too small"
OVER_EXPOSED = "far over-exposed"
UNDER_EXPOSED = "far under-exposed"
UNIFORM = "near-uniform"
NOISE = "pixel noise"
REASONS = (TOO_SMALL, OVER_EXPOSED, UNDER_EXPOSED, UNIFORM, NOISE)


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


def neighbour_correlation(image: np.ndarray) -> float:
    """The smaller of the luminance correlations of each pixel with its right and lower neighbour.

    Near 1 for camera photos, near 0 for pixel noise; 1.0 for a flat image (no variation).
    """
    y = _luminance(np.asarray(image))
    y = y - y.mean()
    variance = float(np.mean(y * y))
    if variance < 1e-6 or min(y.shape) < 2:
        return 1.0
    across = float(np.mean(y[:, 1:] * y[:, :-1])) / variance
    down = float(np.mean(y[1:] * y[:-1])) / variance
    return min(across, down)


def check_pixels(pixels: np.ndarray, original_size: tuple[int, int] | None = None,
                 detail: np.ndarray | None = None) -> str | None:
    """Why a photo is not usable, in words (None: usable).

    Args:
        pixels: The model input ``(size, size, 3)``, 0-255.
        original_size: The photo's ``(width, height)`` as stored; None: the pixels are the
            whole photo (no padding, no size check).
        detail: The photo at a finer scale than the model input (any size, RGB), for the
            pixel-noise check; None: no such check.

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
    # Noise before flatness: fine noise averages to a flat grey in the model input, and the
    # finer detail says what it really is (a flat photo's correlation is 1).
    if detail is not None and min(np.shape(detail)[:2]) >= MIN_DETAIL_SIDE:
        correlation = neighbour_correlation(detail)
        if correlation < MIN_NEIGHBOUR_CORRELATION:
            return (f"{NOISE} (neighbouring pixels are unrelated: correlation {correlation:.2f}, "
                    f"camera photos have at least {MIN_NEIGHBOUR_CORRELATION:.1f})")
    spread = max(float(luminance.std()), *(float(pixels[..., c].std()) for c in range(3)))
    if spread < MIN_STD:
        return f"{UNIFORM} (one flat colour: pixel values vary by {spread:.1f} of 255)"
    return None


def check_photo(photo) -> str | None:
    """:func:`check_pixels` for a :class:`mushroom.preprocess.Photo` (every check)."""
    return check_pixels(photo.pixels, photo.stored_size, photo.detail)


def check_batch(images: np.ndarray, original_sizes: list[tuple[int, int]] | None = None,
                details: list[np.ndarray] | None = None) -> list[str | None]:
    """:func:`check_pixels` for each image of ``(n, size, size, 3)``."""
    sizes = original_sizes or [None] * len(images)
    finer = details if details is not None else [None] * len(images)
    return [check_pixels(image, size, d) for image, size, d in zip(images, sizes, finer, strict=True)]


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
