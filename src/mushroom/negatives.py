"""The negatives of the open-set answer: photos that are not one of the known species (numpy, Pillow).

The evaluate stage fits the open-set rule (:mod:`mushroom.openset_fit`) on some of them and
measures it (:mod:`mushroom.openset_eval`) on the rest, in three groups:

- generated non-mushroom images (:func:`generate_negatives`, families :data:`NEGATIVE_FAMILIES`);
- real non-mushroom photos that ship with well-kept packages (:func:`package_photos`: scikit-learn
  and scikit-image sample photos, cropped at random);
- photos of species the model was never trained on (the dataset's ``unknown`` photos).

:func:`gather_negatives` puts them together and says which kinds are fitted on and which held out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

MIN_UNKNOWN_PHOTOS = 10  # fewer unknown-species photos: they are not used (recorded fallback)
NON_MUSHROOM_GENERATED = "non_mushroom_generated"
NON_MUSHROOM_REAL = "non_mushroom_real"
UNKNOWN_SPECIES = "unknown_species"
GROUP_TITLES = {NON_MUSHROOM_GENERATED: "non-mushroom images (generated)",
                NON_MUSHROOM_REAL: "non-mushroom photos (real, from packages)",
                UNKNOWN_SPECIES: "unknown species"}


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    if rng.random() < 0.5:
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (max(2, size // int(rng.integers(4, 32))),) * 2 + (3,), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def _flat(rng: np.random.Generator, size: int) -> np.ndarray:
    colour = rng.integers(0, 256, 3)
    image = np.broadcast_to(colour, (size, size, 3)).astype(np.int16)
    image = image + rng.normal(0, rng.uniform(0, 3), (size, size, 3)).astype(np.int16)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * math.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
    else:
        cx, cy = rng.uniform(0, 1, 2)
        t = np.hypot(xx - cx, yy - cy)
    t = (t - t.min()) / max(1e-9, t.max() - t.min())
    return (a + (b - a) * t[..., None]).astype(np.uint8)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    kind = rng.integers(0, 3)
    freq = rng.uniform(2, 24) * 2 * math.pi / size
    angle = rng.uniform(0, math.pi)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = -np.sin(angle) * xx + np.cos(angle) * yy
    if kind == 0:  # stripes / grating
        t = 0.5 + 0.5 * np.sin(freq * u)
    elif kind == 1:  # checkerboard
        t = ((np.floor(freq * u / math.pi) + np.floor(freq * v / math.pi)) % 2).astype(np.float64)
    else:  # plaid
        t = 0.25 * (2 + np.sin(freq * u) + np.sin(1.7 * freq * v))
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return (a + (b - a) * t[..., None]).astype(np.uint8)


def _shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 8))):
        x0, y0 = rng.uniform(0, size, 2)
        w, h = rng.uniform(size * 0.1, size * 0.6, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            points = [(float(x), float(y)) for x, y in rng.uniform(0, size, (int(rng.integers(3, 7)), 2))]
            draw.polygon(points, fill=colour)
    return np.asarray(image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5)))))


#: Generated non-mushroom image families: name -> ``(rng, size) -> uint8 (size, size, 3)``.
NEGATIVE_FAMILIES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "noise": _noise,
    "flat": _flat,
    "gradient": _gradient,
    "texture": _texture,
    "shapes": _shapes,
}
#: The families the threshold and the score choice are fitted on; the others are held out.
FIT_FAMILIES = ("noise", "flat", "gradient")
HELD_OUT_FAMILIES = ("texture", "shapes")


def generate_negatives(family: str, count: int, size: int, seed: int = 0) -> np.ndarray:
    """``count`` generated non-mushroom images of ``family`` as model input ``(count, size, size, 3)``.

    Images are drawn at 2-4x ``size`` and reduced the way photos are
    (:func:`mushroom.preprocess.resize_with_pad`), so they reach the model as a photo would.
    """
    return _generated(family, count, size, seed)[0]


def _detail(image: Image.Image) -> np.ndarray:
    """An image as the quality gate's noise check sees it (:attr:`mushroom.preprocess.Photo.detail`)."""
    from mushroom.preprocess import DETAIL_SIDE

    image = image.copy()
    image.thumbnail((DETAIL_SIDE, DETAIL_SIDE), Image.Resampling.BOX)
    return np.asarray(image)


def _generated(family: str, count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`generate_negatives` and the quality gate's refusal of each image, as drawn."""
    from mushroom.preprocess import resize_with_pad
    from mushroom.quality import check_pixels

    if family not in NEGATIVE_FAMILIES:
        raise ValueError(f"negative family {family!r} is not one of {list(NEGATIVE_FAMILIES)}")
    draw = NEGATIVE_FAMILIES[family]
    rng = np.random.default_rng([seed, sorted(NEGATIVE_FAMILIES).index(family)])
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    refused = np.zeros(count, bool)
    for i in range(count):
        side = int(size * rng.uniform(2, 4))
        drawn = Image.fromarray(draw(rng, side))
        out[i] = resize_with_pad(drawn, size)
        refused[i] = check_pixels(out[i], None, _detail(drawn)) is not None  # drawn, not a photo: any size
    return out, refused


@dataclass
class PackagePhotos:
    """Real non-mushroom photos shipped with installed packages (crops of them, as model input)."""

    images: np.ndarray
    sources: list[str] = field(default_factory=list)
    refused: np.ndarray | None = None  # the quality gate's refusal of each, as cropped


# Real non-mushroom photos bundled in scikit-image's wheel (people, animals, objects, space,
# microscopy, stone and grass textures).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
                  "colorwheel", "retina", "brick", "grass", "gravel")


def package_photos(size: int, crops_per_photo: int = 8, seed: int = 0) -> PackagePhotos:
    """Real photos that ship with scikit-learn and scikit-image, cropped at random.

    Each photo gives its whole frame and ``crops_per_photo - 1`` random square crops (30-80%
    of the shorter side), reduced like a photo (:func:`mushroom.preprocess.resize_with_pad`).
    """
    import skimage.data as skdata
    from sklearn.datasets import load_sample_images

    from mushroom.preprocess import resize_with_pad

    data = load_sample_images()
    photos: list[tuple[str, np.ndarray]] = [(f"sklearn:{name.rsplit('/', 1)[-1]}", img)
                                            for name, img in zip(data.filenames, data.images, strict=True)]
    for name in SKIMAGE_PHOTOS:  # inside the scikit-image wheel: no download
        img = np.asarray(getattr(skdata, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        photos.append((f"skimage:{name}", img[..., :3].astype(np.uint8)))
    from mushroom.quality import check_pixels

    rng = np.random.default_rng(seed)
    images, sources, refused = [], [], []

    def add(name: str, crop: Image.Image) -> None:
        images.append(resize_with_pad(crop, size))
        sources.append(name)
        refused.append(check_pixels(images[-1], crop.size, _detail(crop)) is not None)

    for name, img in photos:
        h, w = img.shape[:2]
        pil = Image.fromarray(img)
        add(name, pil)
        for _ in range(crops_per_photo - 1):
            side = int(min(h, w) * rng.uniform(0.3, 0.8))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            add(name, pil.crop((x, y, x + side, y + side)))
    stack = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return PackagePhotos(stack, sources, np.array(refused, bool))


@dataclass
class Negatives:
    """Photos that are not one of the known species, as model input, grouped in kinds.

    Attributes:
        images: Kind name -> ``(n, size, size, 3)`` model input.
        gate: Kind name -> the quality gate's refusal per photo (True: "not a usable photo").
        group: Kind name -> :data:`NON_MUSHROOM_GENERATED`, :data:`NON_MUSHROOM_REAL` or
            :data:`UNKNOWN_SPECIES`.
        fit: The kinds the score is chosen on; the others are held out (reported only).
        notes: Fallbacks taken while gathering them (too few unknown photos, ...).
        unchecked: Why there are no unknown-species photos to check the score on (None: there are).
        taxa: Kind name -> each photo's taxon id (the unknown-species kinds only).
    """

    images: dict[str, np.ndarray] = field(default_factory=dict)
    gate: dict[str, np.ndarray] = field(default_factory=dict)
    group: dict[str, str] = field(default_factory=dict)
    fit: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    unchecked: str | None = None
    taxa: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, kind: str, images: np.ndarray, gate: np.ndarray, group: str, fit: bool) -> None:
        self.images[kind], self.gate[kind], self.group[kind] = images, np.asarray(gate, dtype=bool), group
        if fit:
            self.fit.add(kind)


def gather_negatives(size: int, per_family: int = 60, unknown_images: np.ndarray | None = None,
                     unknown_taxa: np.ndarray | None = None, unknown_gate: np.ndarray | None = None,
                     seed: int = 0) -> Negatives:
    """The negatives of the open-set evaluation.

    Generated families :data:`FIT_FAMILIES` are fitted on, :data:`HELD_OUT_FAMILIES` are held
    out. The real package photos (:func:`package_photos`) are split by source photo, its crops
    together: every other one is fitted on (``real_photos_fit``, the score choice's second
    constraint), the rest held out (``real_photos_held_out``). Unknown-species photos (at least
    :data:`MIN_UNKNOWN_PHOTOS`) are split by taxon: every other taxon is fitted on, the rest
    held out (one taxon: fitted on, none held out). Fewer photos: left out, with a note.
    """
    negatives = Negatives()
    for family in NEGATIVE_FAMILIES:
        images, gate = _generated(family, per_family, size, seed)
        negatives.add(family, images, gate, NON_MUSHROOM_GENERATED, family in FIT_FAMILIES)
    real = package_photos(size, seed=seed)
    if len(real.images):
        sources = np.asarray(real.sources)
        fit_rows = np.isin(sources, sorted(set(real.sources))[::2])
        negatives.add("real_photos_fit", real.images[fit_rows], real.refused[fit_rows], NON_MUSHROOM_REAL, True)
        if (~fit_rows).any():
            negatives.add("real_photos_held_out", real.images[~fit_rows], real.refused[~fit_rows],
                          NON_MUSHROOM_REAL, False)
    n_unknown = 0 if unknown_images is None else len(unknown_images)
    if n_unknown >= MIN_UNKNOWN_PHOTOS:
        taxa = np.asarray(unknown_taxa)
        gate = np.zeros(n_unknown, bool) if unknown_gate is None else np.asarray(unknown_gate, bool)
        order = sorted(set(taxa.tolist()))
        fit_taxa = set(order[::2]) if len(order) > 1 else set(order)
        fit_rows = np.isin(taxa, list(fit_taxa))
        negatives.add("unknown_fit", unknown_images[fit_rows], gate[fit_rows], UNKNOWN_SPECIES, True)
        negatives.taxa["unknown_fit"] = taxa[fit_rows]
        if (~fit_rows).any():
            negatives.add("unknown_held_out", unknown_images[~fit_rows], gate[~fit_rows],
                          UNKNOWN_SPECIES, False)
            negatives.taxa["unknown_held_out"] = taxa[~fit_rows]
    elif n_unknown:
        negatives.unchecked = f"{n_unknown} unknown-species photos are fewer than {MIN_UNKNOWN_PHOTOS}"
        negatives.notes.append(f"{negatives.unchecked}: not used; the score is chosen on non-mushroom images only")
    else:
        negatives.unchecked = "dataset.unknown_species is empty"
        negatives.notes.append("no unknown-species photos (dataset.unknown_species is empty): the unknown-species "
                               "rejection is not measured")
    return negatives
